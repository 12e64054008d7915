"""Running in-silico tasks on Dask: one task per benchmark run or study unit, each writing its own file.

A task is any picklable object with a deterministic `run_id`; `fn(task, out_dir=..., **kwargs)` runs it
on a worker and writes `runs/<run_id>.parquet` (`insilico.storage.write_run`). Tasks whose file is
already there are skipped, so rerunning into the same folder resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


def run_tasks(tasks: Iterable[Any], fn: Callable[..., Any], out_dir: str | Path, *, desc: str,
              scheduler: str | None = None, n_workers: int | None = None, processes: bool = True,
              progress: bool = True, **kwargs: Any) -> Outcome:
    """Run `fn(task, out_dir=..., **kwargs)` on Dask for every task whose result is not yet in `out_dir`.

    `scheduler` is the address of an existing cluster (e.g. one started by dask-jobqueue); otherwise a
    LocalCluster of `n_workers` single-threaded workers (processes, or threads if `processes=False`)
    lives for the call. A failed task is reported in the outcome, not retried; rerunning retries it.
    """
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    tasks = list(tasks)
    ids = [t.run_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise InsilicoError(f"the {desc} holds duplicate tasks")
    out_dir = Path(out_dir).resolve()  # workers may run elsewhere: give them an absolute path
    storage.remove_partial(out_dir)
    done = storage.completed_ids(out_dir)
    todo = [t for t in tasks if t.run_id not in done]
    outcome = Outcome(total=len(tasks), skipped=len(tasks) - len(todo))
    if not todo:
        return outcome

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=n_workers or 1, threads_per_worker=1, processes=processes,
                               dashboard_address=":0")
    client = Client(scheduler or cluster)
    bar = tqdm(total=len(tasks), initial=outcome.skipped, unit="task", desc=desc, disable=not progress,
               smoothing=0.05)
    try:
        futures = client.map(fn, todo, out_dir=str(out_dir), **kwargs, key=[f"task-{t.run_id}" for t in todo],
                             pure=False)
        for future in as_completed(futures):
            if future.status == "error":
                outcome.failed[future.key.removeprefix("task-")] = repr(future.exception())
            else:
                outcome.completed += 1
            bar.update(1)
            if outcome.failed:
                bar.set_postfix(failed=len(outcome.failed), refresh=False)
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
    return outcome
