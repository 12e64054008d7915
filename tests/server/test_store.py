"""The SQLite store: pragmas, migrations == models, idempotent presentations, the image archive."""

from __future__ import annotations

import io
import logging
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from PIL import Image
from sqlalchemy import create_engine, func, inspect, make_url, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session as DBSession, sessionmaker

from server.session_config import SessionConfig
from server.settings import Settings
from server.store import db
from server.store.archive import ImageArchive
from server.store.models import (
    Base,
    Batch,
    Event,
    Generation,
    Presentation,
    Stimulus,
    StimulusKind,
    JSONValue,
    Thread,
    UTCDateTime,
    decode_codes,
    encode_codes,
    read_json,
    read_time,
    stored_json,
    stored_time,
    utcnow,
)
from server.store.records import PresentationRecord, create_session, log_event, record_presentations
from tests.server.conftest import count_in_the_file, session_config, thread_config


def png_bytes(value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (0, value, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_sqlite_pragmas(settings: Settings) -> None:
    db_engine = db.make_db_engine(settings.database_url)
    with db_engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.BUSY_TIMEOUT_MS
    db_engine.dispose()


def test_the_engines_own_connection_has_the_pragmas_and_rolls_back_a_failed_step(db_sessions) -> None:
    step_db = db.StepConnection(db_sessions)
    try:
        with step_db.begin() as transaction:
            cursor = db.driver(transaction)
            assert cursor.execute("PRAGMA foreign_keys").fetchone() == (1,)
            assert cursor.execute("PRAGMA busy_timeout").fetchone() == (db.BUSY_TIMEOUT_MS,)
        with pytest.raises(sqlite3.IntegrityError), step_db.begin() as transaction:
            db.driver(transaction).execute(
                "INSERT INTO events (time, level, kind, message) VALUES ('2026-01-01', 'info', 'k', 'm')")
            db.driver(transaction).execute(  # no such stimulus or batch: the step fails here
                "INSERT INTO presentations (presentation_id, stimulus_id, batch_id, rig, onset, rates_json, "
                "window_start_ms, window_end_ms, received_at) VALUES ('p', 's', 'b', 'r', 0, '[]', 0, 1, '2026')")
        with db_sessions() as session:
            assert session.scalar(select(func.count()).select_from(Event)) == 0  # the event went with it
    finally:
        step_db.close()


def test_wal_lets_a_write_commit_while_a_reader_holds_a_snapshot(settings: Settings, db_sessions) -> None:
    path = make_url(settings.database_url).database
    reader = sqlite3.connect(path, isolation_level=None)
    writer = sqlite3.connect(path, isolation_level=None, timeout=0.5)  # rollback-journal mode: "database is locked"
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM events").fetchone() == (0,)
        writer.execute("INSERT INTO events (time, level, kind, message) VALUES ('2026-01-01', 'info', 'k', 'm')")
        assert reader.execute("SELECT count(*) FROM events").fetchone() == (0,)  # its snapshot
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM events").fetchone() == (1,)
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize("background", [False, True])
def test_commits_checkpoint_the_wal_only_when_the_process_does_not(settings: Settings, background: bool) -> None:
    """With ``background_checkpoints`` no commit copies the WAL into the database file, however large it
    grows; ``BackgroundCheckpoints`` does, on its own thread. Without it, the commit past 1000 pages does."""
    path = make_url(settings.database_url).database
    db_engine = db.make_db_engine(settings.database_url, background_checkpoints=background)
    db.upgrade(db_engine)
    sessions = db.make_sessionmaker(db_engine)

    def in_the_file() -> int:  # rows in the database file itself, the WAL ignored
        return count_in_the_file(path, "SELECT count(*) FROM events")

    for _ in range(40):  # ~1200 pages of WAL, past SQLite's threshold of 1000
        with sessions.begin() as session:
            for _ in range(10):
                log_event(session, "bench", "x" * 10_000)
    with db_engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == (0 if background else 1000)
    assert (in_the_file() == 0) == background
    checkpoints = db.BackgroundCheckpoints(sessions)
    checkpoints.request()
    checkpoints.close()  # waits for it
    assert in_the_file() == 400
    db_engine.dispose()


def test_background_checkpoints_start_at_most_once_per_interval(settings: Settings) -> None:
    """Each checkpoint that empties the WAL costs the next commit one more fsync, so they are spaced out."""
    path = make_url(settings.database_url).database
    db_engine = db.make_db_engine(settings.database_url, background_checkpoints=True)
    db.upgrade(db_engine)
    sessions = db.make_sessionmaker(db_engine)
    checkpoints = db.BackgroundCheckpoints(sessions, interval_s=3600)

    def write_and_request(rows: int) -> None:
        with sessions.begin() as session:
            for _ in range(rows):
                log_event(session, "bench", "x")
        checkpoints.request()

    def in_the_file() -> int:
        return count_in_the_file(path, "SELECT count(*) FROM events")

    write_and_request(3)
    deadline = time.monotonic() + 10
    while in_the_file() < 3:
        assert time.monotonic() < deadline, "the first request started no checkpoint"
        time.sleep(0.02)
    write_and_request(2)  # within the interval
    time.sleep(0.3)
    assert in_the_file() == 3
    checkpoints.interval_s = 0
    checkpoints.request()
    checkpoints.close()
    assert in_the_file() == 5
    db_engine.dispose()

def test_a_failing_checkpoint_is_logged_once_and_its_recovery_too(settings: Settings, caplog) -> None:
    """A full disk fails every checkpoint: one warning for the episode (not one every 2 s), a line when it ends."""
    path = make_url(settings.database_url).database
    db_engine = db.make_db_engine(settings.database_url, background_checkpoints=True)
    db.upgrade(db_engine)
    db_engine.dispose()
    impatient = create_engine(settings.database_url, connect_args={"timeout": 0})  # no busy wait
    checkpoints = db.BackgroundCheckpoints(db.make_sessionmaker(impatient), interval_s=0)
    holder = sqlite3.connect(path)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")  # every other connection now fails: "database is locked"
    with caplog.at_level(logging.INFO, logger="server.store.db"):
        for _ in range(3):
            checkpoints.request().result()
        holder.close()
        for _ in range(2):
            checkpoints.request().result()
    checkpoints.close()
    impatient.dispose()
    assert [(r.levelname, r.getMessage().split(" (")[0]) for r in caplog.records] == [
        ("WARNING", "WAL checkpoint failed"), ("INFO", "WAL checkpoint succeeded again")]
    assert "database is locked" in caplog.records[0].getMessage()


def test_migrations_match_the_models(db_sessions: sessionmaker[DBSession]) -> None:
    with db_sessions() as session:
        differences = compare_metadata(MigrationContext.configure(session.connection()), Base.metadata)
    assert differences == []


def test_every_migration_downgrades_and_upgrades_again(settings: Settings, db_engine) -> None:
    from alembic import command

    def names(kind):
        with db_engine.connect() as connection:
            return {name for (name,) in connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = ? AND name != 'alembic_version' "
                "AND name NOT LIKE 'sqlite_autoindex_alembic%'", (kind,))}
    config = db.alembic_config(settings.database_url)
    tables, indexes = names("table"), names("index")
    command.downgrade(config, "0005_read_indexes")
    assert names("index") - indexes == {"ix_stimuli_content_hash", "ix_stimuli_session_id", "ix_events_thread_id"}
    command.downgrade(config, "base")
    assert names("table") == names("index") == set()
    db.upgrade(db_engine)
    assert (names("table"), names("index")) == (tables, indexes)
    with db_engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


@pytest.mark.parametrize(("query", "index"), [
    ("SELECT id FROM stimuli WHERE session_id = 1", "ix_stimuli_session_kind"),
    ("SELECT id FROM events WHERE thread_id = 1", "ix_events_thread_kind"),
])
def test_lookups_by_session_or_thread_alone_use_the_two_column_indexes(db_engine, query, index) -> None:
    with db_engine.connect() as connection:
        plan = " ".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
    assert f"USING COVERING INDEX {index}" in plan or f"USING INDEX {index}" in plan, plan


def test_upgrading_an_up_to_date_database_is_a_no_op(
    settings: Settings, db_engine, db_sessions: sessionmaker[DBSession]
) -> None:
    with db_sessions() as session:
        create_session(session, SessionConfig.model_validate(session_config()))
        session.commit()
        schema_before = session.execute(text("SELECT sql FROM sqlite_master ORDER BY name")).all()
    db.upgrade(db_engine)
    head = ScriptDirectory.from_config(db.alembic_config(settings.database_url)).get_current_head()
    with db_sessions() as session:
        assert session.execute(text("SELECT sql FROM sqlite_master ORDER BY name")).all() == schema_before
        assert session.scalar(text("SELECT version_num FROM alembic_version")) == head
        assert session.scalar(text("SELECT count(*) FROM threads")) == 1


def test_foreign_keys_are_enforced(db_sessions: sessionmaker[DBSession]) -> None:
    with db_sessions() as session, pytest.raises(IntegrityError):
        session.add(Thread(session_id=12345, name="x", kind="evolution", generator="g", optimizer="o",
                           optimizer_params_json={}, objective_json={}, seed=0, n_generations=1))
        session.flush()


def test_create_session_draws_and_records_missing_seeds(db_sessions: sessionmaker[DBSession]) -> None:
    config = SessionConfig.model_validate(session_config(threads=[thread_config("a", seed=11), thread_config("b")]))
    with db_sessions() as session:
        created = create_session(session, config)
        session.commit()
        seeds = [thread.seed for thread in created.threads]
        assert seeds[0] == 11 and 0 <= seeds[1] < 2**32
        assert [t["seed"] for t in created.config_json["threads"]] == seeds
        assert session.scalars(select(Event.kind)).all() == ["session.created"]


def test_a_manifold_thread_is_stored_with_its_real_optimizer(db_sessions: sessionmaker[DBSession]) -> None:
    manifold = {"name": "map", "kind": "manifold", "generator": "dcgan-faces", "objective": {"channels": [3]},
                "manifold": {"source": "t0"}}
    config = SessionConfig.model_validate(session_config(threads=[thread_config(), manifold]))
    with db_sessions() as session:
        thread = create_session(session, config).threads[1]
        assert (thread.optimizer, thread.optimizer_params_json, thread.n_generations) == ("fixed-design", {}, 1)
        stored = SessionConfig.model_validate(thread.session.config_json).thread("map")
        assert stored.optimizer == "fixed-design" and stored.manifold.source == "t0"


def make_batch(session: DBSession, n_stimuli: int = 2) -> tuple[Batch, list[str]]:
    created = create_session(session, SessionConfig.model_validate(session_config()))
    thread = created.threads[0]
    generation = Generation(thread_id=thread.id, number=0, codes=encode_codes(np.zeros((n_stimuli, 4))), n_stimuli=n_stimuli)
    session.add(generation)
    session.flush()
    stimulus_ids = [uuid.uuid4().hex for _ in range(n_stimuli)]
    session.add_all(
        Stimulus(id=stimulus_id, session_id=created.id, thread_id=thread.id, generation_id=generation.id,
                 kind=StimulusKind.SYNTHETIC, index=i, content_hash="0" * 64, png_path="images/00/x.png")
        for i, stimulus_id in enumerate(stimulus_ids)
    )
    batch = Batch(id=uuid.uuid4().hex, session_id=created.id, thread_id=thread.id, generation_id=generation.id, rig="rig-A")
    session.add(batch)
    session.commit()
    return batch, stimulus_ids


def presentation(presentation_id: str, stimulus_id: str) -> PresentationRecord:
    return PresentationRecord(presentation_id, stimulus_id, onset=1.7e9, rates=[2.0, float("nan")],
                              window_start_ms=50, window_end_ms=200)


def test_record_presentations_is_idempotent(db_sessions: sessionmaker[DBSession]) -> None:
    with db_sessions() as session:
        batch, (s0, s1) = make_batch(session)
        first = record_presentations(session, batch, [presentation("p1", s0), presentation("p2", s1), presentation("p1", s0)])
        session.commit()
        assert first == (["p1", "p2"], ["p1"])
        assert session.scalar(select(Batch.results_first_at).where(Batch.id == batch.id)) is not None
        retry = record_presentations(session, batch, [presentation("p2", s1), presentation("p3", s0)])
        session.commit()
        assert retry == (["p3"], ["p2"])
        stored = session.execute(select(Presentation.presentation_id, Presentation.rig, Presentation.rates_json)
                                 .order_by(Presentation.id)).all()
        assert stored == [("p1", "rig-A", [2.0, None]), ("p2", "rig-A", [2.0, None]), ("p3", "rig-A", [2.0, None])]


def test_presentation_id_is_unique_in_the_schema(db_sessions: sessionmaker[DBSession]) -> None:
    with db_sessions() as session:
        batch, (s0, _) = make_batch(session)
        row = dict(presentation_id="p1", stimulus_id=s0, batch_id=batch.id, rig="r", onset=0.0, rates_json=[1.0],
                   window_start_ms=50, window_end_ms=200)
        session.add(Presentation(**row))
        session.commit()
        session.add(Presentation(**row))
        with pytest.raises(IntegrityError):
            session.commit()


def test_the_schema_refuses_a_presentation_of_an_unknown_stimulus(db_sessions: sessionmaker[DBSession]) -> None:
    with db_sessions() as session:
        batch, _ = make_batch(session)
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):  # raised by the driver: records runs SQL on it
            record_presentations(session, batch, [presentation("p1", "ghost")])


def test_json_columns_store_nan_as_null_and_times_are_utc(db_sessions: sessionmaker[DBSession]) -> None:
    with db_sessions() as session:
        event_id = log_event(session, "test", "nan check", data={"scores": [1.0, float("nan"), np.float64(2.5)]})
        session.commit()
        assert session.scalar(text("SELECT data_json FROM events")) == '{"scores": [1.0, null, 2.5]}'
        session.expire_all()
        stored = session.get(Event, event_id)
        assert stored.time.tzinfo is not None and abs((utcnow() - stored.time).total_seconds()) < 60
        session.add(Event(kind="x", message="naive time", time=datetime(2026, 1, 1)))
        with pytest.raises(StatementError, match="naive datetime"):
            session.flush()


@pytest.mark.parametrize("moment", [datetime(2026, 11, 29, 1, 2, 3, tzinfo=UTC),  # no microseconds to drop
                                    datetime(2026, 11, 29, 1, 2, 3, 450017, tzinfo=timezone(timedelta(hours=-5)))])
def test_the_driver_writes_and_reads_what_the_orm_columns_do(moment: datetime) -> None:
    """The hot path's SQL (queries, records) formats times and JSON itself; SQLAlchemy's processors must agree."""
    dialect = sqlite.dialect()
    orm_text = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)(moment)
    assert stored_time(moment) == orm_text
    assert read_time(orm_text) == UTCDateTime().dialect_impl(dialect).result_processor(dialect, None)(orm_text) == moment
    value = {"rates": [1.5, float("nan"), np.float64(2.0)], "flag": True, "nested": {"x": (1, float("inf"))}}
    orm_json = JSONValue().dialect_impl(dialect).bind_processor(dialect)(value)
    assert stored_json(value) == orm_json
    assert read_json(orm_json) == JSONValue().dialect_impl(dialect).result_processor(dialect, None)(orm_json)
    assert stored_json(None) is None and read_json(None) is None


def test_row_ids_sort_by_creation_time_and_do_not_repeat() -> None:
    import re
    import time

    from server.store.records import new_id

    earlier = [new_id() for _ in range(5000)]
    time.sleep(0.002)
    later = new_id()
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in earlier + [later])
    assert len(set(earlier)) == len(earlier)
    assert max(earlier) < later

def test_codes_round_trip() -> None:
    codes = np.random.default_rng(0).normal(size=(5, 7))
    assert np.array_equal(decode_codes(encode_codes(codes), 5), codes)
    assert np.array_equal(decode_codes(encode_codes(codes[2])), codes[2])


def test_archive_dedups_by_content_hash(tmp_path) -> None:
    archive = ImageArchive(tmp_path)
    first = archive.save(png_bytes(1))
    again = archive.save(png_bytes(1))
    other = archive.save(png_bytes(2))
    assert first == again and first.content_hash != other.content_hash
    assert first.png_path == f"images/{first.content_hash[:2]}/{first.content_hash}.png"
    assert archive.path(first.content_hash) == tmp_path / first.png_path
    assert archive.read(first.content_hash) == png_bytes(1)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        [f"{first.content_hash}.png", f"{other.content_hash}.png"]
    )  # no temporary files left behind


def test_archive_rejects_bad_input(tmp_path) -> None:
    archive = ImageArchive(tmp_path)
    with pytest.raises(ValueError, match="PNG signature"):
        archive.save(b"GIF89a...")
    with pytest.raises(ValueError, match="sha256"):
        archive.path("../../etc/passwd")
    with pytest.raises(FileNotFoundError):
        archive.read("0" * 64)


def test_every_table_the_design_names_exists(db_sessions: sessionmaker[DBSession]) -> None:
    with db_sessions() as session:
        tables = set(inspect(session.connection()).get_table_names())
    assert {"sessions", "threads", "generations", "stimuli", "presentations", "batches", "events"} <= tables


def test_partial_image_writes_are_removed_and_images_kept(tmp_path) -> None:
    archive = ImageArchive(tmp_path)
    png = png_bytes(3)
    saved = archive.save(png)
    leftover = archive.path(saved.content_hash).parent / ".tmp-abc123.png"  # what a kill mid-save leaves
    leftover.write_bytes(png[:10])
    assert archive.remove_partial_writes() == 1
    assert not leftover.exists() and archive.read(saved.content_hash) == png
    assert archive.remove_partial_writes() == 0
