"""Running in-silico tasks on Dask: one task per benchmark run or study unit, each writing its own file.

A task is any picklable object with a deterministic `run_id`; `fn(task, out_dir=..., **kwargs)` runs it
on a worker and writes `runs/<run_id>.parquet` (`insilico.storage.write_run`). Tasks whose file is
already there are skipped, so rerunning into the same folder resumes. Ctrl-C stops the run with one line
saying how many tasks are saved (`run_tasks`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insilico import InsilicoError, storage


@dataclass
class Outcome:
    """What `run_tasks` did: tasks found on disk, tasks completed now, tasks that failed (id -> error)."""

    total: int
    skipped: int
    completed: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def quiet_dask() -> None:
    """Keep Dask's warnings and errors only: at INFO it logs every worker's start and stop, and a harmless race
    at shutdown as a traceback. Unless the root logger shows debug messages (``actmax -v``); call it after
    importing ``distributed``, whose import sets its loggers' levels."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("distributed").setLevel(logging.WARNING)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while local worker processes start, so that they inherit it: Ctrl-C reaches the whole
    foreground process group, and the driver, not each worker (with a traceback), handles it. (A Ctrl-C in these
    seconds is lost.)"""
    if threading.current_thread() is not threading.main_thread():  # signal handlers are the main thread's
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _dask_muted() -> Iterator[None]:
    """Dask's loggers silenced while an interrupted run's cluster closes: "lost computed tasks, which will be
    recomputed", "worker still alive, killing" are about the tasks Ctrl-C cancelled, which a resume reruns."""
    dask_logger = logging.getLogger("distributed")
    level = dask_logger.level
    dask_logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        dask_logger.setLevel(level)


def _quiet_cancellations() -> None:
    """On a local worker: a task that an interrupted run's cluster cancels as it closes is no warning (its only
    one; a resume reruns the task). Errors still show."""
    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)


def run_tasks(tasks: Iterable[Any], fn: Callable[..., Any], out_dir: str | Path, *, desc: str,
              scheduler: str | None = None, n_workers: int | None = None, processes: bool = True,
              progress: bool = True, describe: Callable[[Any], str] | None = None, noun: str = "tasks",
              **kwargs: Any) -> Outcome:
    """Run `fn(task, out_dir=..., **kwargs)` on Dask for every task whose result is not yet in `out_dir`.

    `scheduler` is the address of an existing cluster (e.g. one started by dask-jobqueue); otherwise a
    LocalCluster of `n_workers` single-threaded workers (processes, or threads if `processes=False`)
    lives for the call. A failed task is reported in the outcome, not retried; rerunning retries it.
    With `describe`, for tasks that differ much in cost, the bar shows the running tasks (the first
    unfinished ones in submission order, one per worker thread) by `describe(task)` instead of an ETA.
    On Ctrl-C (KeyboardInterrupt, raised again) the cluster closes without Dask's shutdown messages (the
    tasks it cancels are rerun on resume) and one line on stderr says how many `noun` are saved in `out_dir`.
    """
    import dask
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    quiet_dask()
    tasks = list(tasks)
    ids = [t.run_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise InsilicoError(f"the {desc} holds duplicate tasks")
    given, out_dir = out_dir, Path(out_dir).resolve()  # workers may run elsewhere: give them an absolute path
    storage.remove_partial(out_dir)
    done = storage.completed_ids(out_dir)
    todo = [t for t in tasks if t.run_id not in done]
    outcome = Outcome(total=len(tasks), skipped=len(tasks) - len(todo))
    if not todo:
        return outcome

    cluster = None
    if scheduler is None:
        # Dask starts worker processes with MALLOC_TRIM_THRESHOLD_=65536, which hands freed memory back at once:
        # torch's large short-lived tensors then page-fault again on every pass (10x the faults, 45% of a study
        # unit's time in the kernel). The C library's default keeps it.
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}), \
                _sigint_ignored():
            cluster = LocalCluster(n_workers=n_workers or 1, threads_per_worker=1, processes=processes,
                                   dashboard_address=":0")
    try:
        client = Client(scheduler or cluster)
    except OSError as exc:
        if cluster is not None:
            cluster.close()
            raise
        raise InsilicoError(f"--scheduler {scheduler}: no Dask scheduler is reachable at that address ({exc}); "
                            "start one there (`dask scheduler`), or leave out --scheduler to run on this "
                            "machine") from None
    if cluster is not None:
        client.run(_quiet_cancellations)
    no_eta = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
    bar = tqdm(total=len(tasks), initial=outcome.skipped, unit="task", desc=desc, disable=not progress,
               smoothing=0.05, bar_format=no_eta if describe else None)
    unfinished = {t.run_id: t for t in todo}  # in submission order, which Dask roughly keeps

    def show_state(refresh: bool = False) -> None:
        slots = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()) or 1
        running = [describe(t) for t in list(unfinished.values())[:slots]] if describe else []
        state = [f"running {', '.join(running)}"] if running else []
        state += [f"{len(outcome.failed)} failed"] if outcome.failed else []
        bar.set_postfix_str("; ".join(state), refresh=refresh)

    interrupted = False
    try:
        futures = client.map(fn, todo, out_dir=str(out_dir), **kwargs, key=[f"task-{t.run_id}" for t in todo],
                             pure=False)
        show_state(refresh=True)
        for future in as_completed(futures):
            run_id = future.key.removeprefix("task-")
            del unfinished[run_id]
            if future.status == "error":
                outcome.failed[run_id] = repr(future.exception())
            else:
                outcome.completed += 1
            show_state()
            bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        bar.close()
        with _dask_muted() if interrupted else contextlib.nullcontext():
            client.close()
            if cluster is not None:
                cluster.close()
        if interrupted:
            saved = len(storage.completed_ids(out_dir) & set(ids))
            print(f"interrupted: {saved} of {len(tasks)} {noun} saved in {given}; run the same command again to "
                  "resume", file=sys.stderr)
    return outcome
