"""Settings (environment) and session configuration (validation, files, the documented example)."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import sessionmaker

from server import ServerError
from server.session_config import ConfigError, FlaggedTrialsConfig, SessionConfig, load_session_config, read_config_file
from server.main import create_app
from server.settings import Settings
from tests.server.conftest import session_config, thread_config

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_settings_defaults_are_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ACTMAX_"):
            monkeypatch.delenv(name)
    settings = Settings()
    assert settings.http_host == "127.0.0.1" and settings.zmq_endpoint == "tcp://127.0.0.1:5555"
    assert settings.database_url == "sqlite:///actmax-data/actmax.sqlite"
    assert (settings.heartbeat_s, settings.liveness, settings.device) == (2.0, 5, "auto")
    assert settings.token is None


def test_settings_read_the_actmax_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ACTMAX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ACTMAX_HTTP_PORT", "9001")
    monkeypatch.setenv("ACTMAX_TOKEN", "s3cret")
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path}/actmax.sqlite"
    assert settings.http_port == 9001 and settings.require_token() == "s3cret"
    assert "s3cret" not in repr(settings)
    monkeypatch.setenv("ACTMAX_DATABASE_URL", "sqlite:////elsewhere/x.sqlite")
    assert Settings().database_url == "sqlite:////elsewhere/x.sqlite"
    monkeypatch.setenv("ACTMAX_HTTP_PORT", "eighty")
    with pytest.raises(ValidationError, match="http_port"):
        Settings()


def test_serving_without_a_token_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="ACTMAX_TOKEN"):
        create_app(Settings(data_dir=tmp_path, token=None), sessionmaker())


def test_session_config_defaults() -> None:
    config = SessionConfig.model_validate(session_config())
    assert config.response_window_ms == (50, 200)
    assert (config.references.source, config.references.count) == ("skimage", 10)
    [thread] = config.threads
    assert (thread.kind, thread.seed, thread.n_generations, thread.repeats, thread.optimizer_params) == (
        "evolution", None, 50, 1, {})
    assert thread.objective.combine == "mean"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"threads": [thread_config(seed=-1)]}, "threads.0.seed"),
        ({"threads": [thread_config(seed=2**40)]}, "threads.0.seed"),
        ({"threads": [thread_config(objective={"channels": [1, 1]})]}, "threads.0.objective.channels"),
        ({"threads": [thread_config(objective={"channels": [-1]})]}, "threads.0.objective.channels.0"),
        ({"threads": [thread_config(n_generations=0)]}, "threads.0.n_generations"),
        ({"threads": [thread_config(kind="tuning")]}, "threads.0.kind"),
        ({"rig": ""}, "rig"),
        ({"rig": "rig A"}, "rig"),  # a name no rig can say HELLO with (rig_client.protocol)
        ({"rig": "-rig"}, "rig"),
        ({"rig": "r" * 65}, "rig"),
        ({"response_window_ms": [50, 60_001]}, "response_window_ms.1"),  # longer than a BATCH may carry
        ({"references": {"source": "skimage", "count": 101}}, "references.count"),
        # a wrong type is refused, not coerced: no bool as an int, no number as text
        ({"threads": [thread_config(objective={"channels": [True]})]}, "threads.0.objective.channels.0"),
        ({"threads": [thread_config(n_generations=True)]}, "threads.0.n_generations"),
        ({"threads": [thread_config(n_generations="3")]}, "threads.0.n_generations"),
        ({"threads": [thread_config(seed="7")]}, "threads.0.seed"),
        ({"threads": [thread_config(repeats="1")]}, "threads.0.repeats"),
        ({"response_window_ms": ["50", 200]}, "response_window_ms.0"),
        ({"references": {"count": 2.0}}, "references.count"),
        ({"threads": [thread_config(), thread_config("map", kind="manifold", optimizer=None,
                                                     manifold={"source": "t0", "step_deg": 18.0})]},
         "threads.1.manifold.step_deg"),
        ({"threads": [thread_config(), thread_config("map", kind="manifold", optimizer=None,
                                                     manifold={"source": "t0", "planes": ["random", "random"]})]},
         "threads.1.manifold.planes"),
        ({"threads": [thread_config(), thread_config("map", kind="manifold", optimizer=None, n_generations=5,
                                                     manifold={"source": "t0"})]}, "threads.1"),  # it was made 1
        ({"drift": {"drop_sem": "4"}}, "drift.drop_sem"),
        ({"session_start_time": "2030-01-01T00:00:00Z"}, "session_start_time"),  # breaks NWB's DANDI check
    ],
)
def test_invalid_session_config_names_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SessionConfig.model_validate(session_config(**change))
    assert field in [".".join(map(str, error["loc"])) for error in caught.value.errors()]


def test_a_session_start_time_may_be_up_to_a_minute_ahead_of_the_servers_clock() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=30)  # another machine's clock, a little fast
    assert SessionConfig.model_validate(session_config(session_start_time=soon.isoformat())).session_start_time == soon
    with pytest.raises(ValidationError, match="in the future"):
        SessionConfig.model_validate(session_config(session_start_time=(soon + timedelta(minutes=1)).isoformat()))


def test_reference_folder_must_exist(tmp_path: Path) -> None:
    config = SessionConfig.model_validate(session_config(references={"source": str(tmp_path), "count": 3}))
    assert config.references.source == str(tmp_path)


def test_load_session_config_from_json_and_yaml(tmp_path: Path) -> None:
    as_json = tmp_path / "session.json"
    as_json.write_text(json.dumps(session_config()))
    as_yaml = tmp_path / "session.yaml"
    as_yaml.write_text("name: exp-1\nrig: rig-A\nthreads:\n  - name: t0\n    generator: dcgan-faces\n"
                       "    optimizer: cma\n    objective: {channels: [3]}\n")
    assert load_session_config(as_json) == load_session_config(as_yaml)


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (json.dumps(session_config(threads=[thread_config(optimizer="adam")])), ".json", r"threads\.0\.optimizer: unknown optimizer 'adam'"),
        (json.dumps(session_config(colour="red")), ".json", r"colour: unknown key \(allowed: name, rig, "),
        (json.dumps(session_config(threads=[thread_config(n_generation=3)])), ".json",
         r"threads\.0\.n_generation: unknown key, did you mean 'n_generations'\?"),
        ("{not json", ".json", "not valid JSON"),
        ("threads: [unclosed", ".yml", "not valid YML"),
        ("- a list", ".yaml", "a session config is a mapping"),
        (b"name: caf\xe9", ".yaml", "not UTF-8"),
        (json.dumps(session_config(session_start_time="2026-11-30T14:00:00")), ".json",
         r"session_start_time: 2026-11-30T14:00:00 has no time zone: give the one the recording ran in, e\.g\. "
         r"2026-11-30T14:00:00\+09:00, or 2026-11-30T14:00:00Z for UTC"),
        (json.dumps(session_config(threads=[thread_config("Kanal-\u00c4"), thread_config("Kanal-A\u0308")])), ".json",
         r"thread names must be unique, repeated: .* \(the same letters, written in two Unicode forms\)"),
        (json.dumps(session_config(threads=[thread_config(optimizer_params={"sigma0": 1.0})])).replace("1.0", "1e400"),
         ".json", r"threads\.0\.optimizer_params\.sigma0: inf is not a finite number"),
        # A key twice: the last one counted, silently (a session of 5 generations, meant as 500).
        ("name: s\nrig: r\nthreads:\n  - {name: t, generator: dcgan-faces, optimizer: cma, objective: {channels: [0]},"
         " n_generations: 500, n_generations: 5}\n", ".yaml", r"key 'n_generations' is given twice in one mapping"),
        (json.dumps(session_config()).replace('"rig":', '"name": "again", "rig":'), ".json",
         r"not valid JSON: key 'name' is given twice in one mapping: only one would count"),
        (json.dumps(session_config()), ".txt", r"a session config is a \.json, \.yaml or \.yml file; name it so"),
    ],
)
def test_load_session_config_errors_name_the_problem(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    path = tmp_path / f"session{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=message):
        load_session_config(path)
    with pytest.raises(ConfigError, match="cannot read session config"):
        load_session_config(tmp_path / "missing.json")


def test_yaml_dates_stay_the_text_written(tmp_path: Path) -> None:
    path = tmp_path / "session.yaml"
    path.write_text("name: 2026-11-27\nrig: rig-A\nsession_start_time: 2026-11-27T10:00:00+01:00\n"
                    "threads:\n  - {name: t, generator: dcgan-faces, optimizer: cma, objective: {channels: [0]}}\n")
    data = read_config_file(path)
    assert data["name"] == "2026-11-27" and data["session_start_time"] == "2026-11-27T10:00:00+01:00"
    json.dumps(data)  # what `actmax session create` sends
    assert load_session_config(path).session_start_time.isoformat() == "2026-11-27T10:00:00+01:00"


def test_yaml_numbers_are_read_as_yaml_1_2_and_json_read_them(tmp_path: Path) -> None:
    path = tmp_path / "session.yaml"
    path.write_text("name: t\nrig: rig-A\nthreads:\n  - {name: t, generator: dcgan-faces, optimizer: cma, "
                    "optimizer_params: {sigma0: 1e-1, mutation_size: 5E-1}, objective: {channels: [0]}}\n")
    assert read_config_file(path)["threads"][0]["optimizer_params"] == {"sigma0": 0.1, "mutation_size": 0.5}


def test_documented_example_is_valid() -> None:
    page = (DOCS / "session_config.md").read_text()
    [example] = re.findall(r"```json\n(.*?)```", page, flags=re.S)
    config = SessionConfig.model_validate_json(example)
    assert len(config.threads) == 2


def manifold_thread(**overrides) -> dict:
    base = {"name": "map", "kind": "manifold", "generator": thread_config()["generator"],
            "objective": {"channels": [0]}, "manifold": {"source": thread_config()["name"]}}
    return {**base, **overrides}


def test_manifold_thread_maps_around_an_evolution_of_the_same_session():
    config = SessionConfig.model_validate(session_config(threads=[thread_config(), manifold_thread()]))
    manifold = config.threads[1].manifold
    assert (manifold.planes, manifold.step_deg, manifold.n) == (["pc2-3"], 18, 11)
    assert SessionConfig.model_validate(session_config(threads=[
        thread_config(), manifold_thread(manifold={"source": thread_config()["name"], "step_deg": 9})
    ])).threads[1].manifold.n == 21


@pytest.mark.parametrize(
    ("thread", "message", "field"),
    [
        (manifold_thread(manifold=None), "needs manifold settings", "threads.1"),
        (manifold_thread(optimizer="cma"), "takes no optimizer", "threads.1"),
        (manifold_thread(manifold={"source": "nope"}), "is not an evolution thread", "threads.1.manifold.source"),
        (manifold_thread(generator="deepsim-fc6"), "differs from its source", "threads.1.generator"),
        (manifold_thread(generator_options={"truncation": 0.5}), "does not take option", "threads.1.generator_options"),
        (manifold_thread(manifold={"source": "x", "step_deg": 10}), "step_deg", "threads.1.manifold.step_deg"),
    ],
)
def test_bad_manifold_threads_are_refused_with_the_reason(thread, message, field):
    with pytest.raises(ValidationError, match=message) as caught:
        SessionConfig.model_validate(session_config(threads=[thread_config(), thread]))
    assert [".".join(map(str, error["loc"])) for error in caught.value.errors()] == [field]


def test_a_manifold_draws_its_sources_images_with_the_same_generator_options():
    evolution = thread_config(generator="biggan-deep-128", generator_options={"truncation": 0.5})
    with pytest.raises(ValidationError, match="differ from its source's") as caught:
        SessionConfig.model_validate(session_config(threads=[evolution, manifold_thread(generator="biggan-deep-128")]))
    assert caught.value.errors()[0]["loc"] == ("threads", 1, "generator_options")


def test_an_evolution_thread_needs_an_optimizer():
    with pytest.raises(ValidationError, match="needs an optimizer"):
        SessionConfig.model_validate(session_config(threads=[thread_config(optimizer=None)]))


def test_a_thread_is_looked_up_by_name():
    config = SessionConfig.model_validate(session_config(threads=[thread_config("a"), thread_config("b")]))
    assert config.thread("b").name == "b"
    with pytest.raises(ConfigError, match="no thread 'c'"):
        config.thread("c")
    assert issubclass(ConfigError, ServerError) and issubclass(ConfigError, ValueError)


def test_flagged_trial_policy_decides_which_presentations_score():
    reshow = FlaggedTrialsConfig()
    tolerant = FlaggedTrialsConfig(max_dropped_frames=2)
    score = FlaggedTrialsConfig(policy="score")
    cases = [None, {}, {"fixation_broken": False, "dropped_frames": 0}, {"fixation_broken": True},
             {"dropped_frames": 1}, {"dropped_frames": 2}, {"dropped_frames": 3}, {"photodiode_onset": 1.0}]
    assert [reshow.scores(f) for f in cases] == [True, True, True, False, False, False, False, True]
    assert [tolerant.scores(f) for f in cases] == [True, True, True, False, True, True, False, True]
    assert all(score.scores(f) for f in cases)
    with pytest.raises(ValidationError, match="policy"):
        FlaggedTrialsConfig(policy="drop")


def test_files_named_in_a_config_are_stored_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A relative weights or eigenbasis path means the server's working directory at creation; stored as such, a
    server restarted from another directory still finds the file."""
    monkeypatch.chdir(tmp_path)
    thread = thread_config(weights="w/dcgan.pt", optimizer="hess-cma",
                           optimizer_params={"eigenbasis": "geo/eigenbasis.npz", "k": 3})
    stored = SessionConfig.model_validate(session_config(threads=[thread])).model_dump(mode="json")["threads"][0]
    assert stored["weights"] == str(tmp_path / "w" / "dcgan.pt")
    assert stored["optimizer_params"] == {"eigenbasis": str(tmp_path / "geo" / "eigenbasis.npz"), "k": 3}
    monkeypatch.chdir("/")
    assert SessionConfig.model_validate(session_config(threads=[stored])).threads[0].weights == stored["weights"]


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_config_saved_with_a_byte_order_mark_is_read(tmp_path: Path, suffix: str) -> None:
    """Notepad, PowerShell and Excel save "UTF-8" with a BOM (and CRLF); JSON refused it, YAML did not."""
    path = tmp_path / f"session{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(session_config(name="Sitzung M\u00fcller")).encode().replace(b", ", b",\r\n"))
    assert load_session_config(path).name == "Sitzung M\u00fcller"


def test_a_yaml_merge_key_may_be_given_again_over_what_it_merges(tmp_path: Path) -> None:
    """Keys given twice are refused, but not a key given over a ``<<: *anchor`` merge: that is how YAML overrides."""
    path = tmp_path / "session.yaml"
    path.write_text("base: &base {generator: dcgan-faces, optimizer: cma, objective: {channels: [0]}, n_generations: 50}"
                    "\nname: s\nrig: r\nthreads:\n  - <<: *base\n    name: t\n    n_generations: 5\n")
    assert read_config_file(path)["threads"] == [{"generator": "dcgan-faces", "optimizer": "cma",
                                                  "objective": {"channels": [0]}, "n_generations": 5, "name": "t"}]


@pytest.mark.parametrize("age", ["", "P6Y", "P30D", "P1Y6M", "PT12H", "P1DT2H", "P0.5Y", "P5Y/P7Y", "P5Y/", "P1M/P1Y"])
def test_an_age_nwb_and_dandi_take_is_accepted(age):
    assert SessionConfig.model_validate(session_config(age=age)).age == age


@pytest.mark.parametrize(("age", "words"), [
    ("PT", "is not an ISO 8601 duration"), ("P1YT", "is not an ISO 8601 duration"), ("P", "is not an ISO 8601"),
    ("P1D1Y", "is not an ISO 8601"), ("6Y", "is not an ISO 8601"),
    ("P6Y/P5Y", "a range that does not grow"), ("P6Y/P6Y", "a range that does not grow"),
    ("P13M/P1Y", "a range that does not grow"),  # compared in days: 13 months are over a year
])
def test_an_age_dandi_refuses_is_refused_but_one_stored_before_still_loads(age, words):
    """These passed the old check and made NWB files that `nwbinspector --config dandi` calls critical."""
    with pytest.raises(ValidationError, match=words):
        SessionConfig.model_validate(session_config(age=age))
    assert SessionConfig.stored(session_config(age=age)).age == age


def test_yaml_aliases_that_stand_for_too_many_values_are_refused_before_they_are_written_out(tmp_path):
    """Nine levels of nine aliases stand for 9**9 values: checked and validated, they took minutes of CPU."""
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    (path := tmp_path / "bomb.yaml").write_text("\n".join([*levels, "name: s", "rig: r"]), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bomb.yaml is not valid YAML: its aliases \(\*name\) stand for 4\d{8} "
                                          r"values, over 100000; write it out with fewer aliases"):
        read_config_file(path)
