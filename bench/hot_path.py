"""Where the server's time goes between a round's last RESULTS and the next BATCH, stretch by stretch.

Runs ``actmax serve`` (``bench/turnaround.py``'s, with its stand-in generators) in its own process with
timestamps put around the hot path's functions (the RESULTS decoded, the step's reads and writes, the drift
monitor, the commit, the ACK and the BATCH encoded and sent), plays one thread's rig as ``bench/turnaround.py``
does, and prints, for the turns that computed a generation, each stretch between two consecutive timestamps
(p50 / p90 / p99 / max ms), the tell, ask and render left out. For the largest, the compute worker's own CPU
time and page faults in it (``getrusage``: CPU time equal to the wall time is work, not waiting).

By default it runs twice, one run each, as served first: as ``actmax serve`` runs, then the baseline, the same
code with glibc's default top pad (``keep_freed_memory``'s other settings kept), under which glibc unmapped the
compute worker's freed heaps. ``--as-served-only`` skips the baseline.

    python bench/hot_path.py [--generator bench-standin-256] [--generations 60] [--show-ms 300]
                             [--as-served-only]

The server process is this script run as ``python bench/hot_path.py serve TRACE-FILE BASELINE ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import resource
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import turnaround  # noqa: E402  (bench/turnaround.py: the server process, the rig loop, the stand-ins)

USAGE = ("r.add_generation", "r.complete_generation", "monitor", "commit")  # stretches with the thread's usage
GLIBC_TOP_PAD = 128 * 1024  # glibc's default M_TOP_PAD


class Trace:
    """Timestamps of the server process, appended to a file by a thread of their own once a second."""

    def __init__(self, out: str):
        self.events: deque[tuple] = deque()  # appended by every thread, taken by the flusher
        threading.Thread(target=self._flush, args=(out,), daemon=True, name="trace-flush").start()

    def stamp(self, label: str, phase: str) -> None:
        usage = None
        if label in USAGE:  # the thread's CPU clock (getrusage's times count whole ticks), and its page faults
            usage = (time.thread_time(), resource.getrusage(resource.RUSAGE_THREAD).ru_minflt)
        self.events.append((label, phase, time.perf_counter(), threading.get_native_id(), usage))

    def _flush(self, out: str) -> None:
        with open(out, "a") as sink:
            while True:
                time.sleep(1.0)
                while self.events:
                    sink.write(json.dumps(self.events.popleft()) + "\n")
                sink.flush()

    def wrap(self, owner, name: str, label: str | None = None) -> None:
        """Stamp each call of ``owner.name`` (a function or a coroutine function) at its start and end."""
        fn, label = getattr(owner, name), label or name

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def timed(*args, **kwargs):
                self.stamp(label, "b")
                try:
                    return await fn(*args, **kwargs)
                finally:
                    self.stamp(label, "e")
        else:
            @functools.wraps(fn)
            def timed(*args, **kwargs):
                self.stamp(label, "b")
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.stamp(label, "e")
        setattr(owner, name, timed)


def instrument(trace: Trace) -> None:
    """Timestamps around the hot path (module attributes, so the callers' lookups find the wrappers)."""
    from server import engine, monitor, steps, thread_runtime, transport
    from server.store import db, queries, records

    trace.wrap(transport, "decode")
    trace.wrap(transport, "encode")
    for name in ("record_results", "complete_generation", "start_generation", "prepare_batch", "render", "next_step",
                 "answer", "owed_stimuli"):
        trace.wrap(steps, name, "steps." + name)
    for name in ("scored_responses", "batch", "batch_stimulus_ids", "generation_objective", "stored_presentations"):
        trace.wrap(queries, name, "q." + name)
    for name in ("add_generation", "complete_generation", "finish_thread", "record_presentations", "add_batch",
                 "log_event"):
        trace.wrap(records, name, "r." + name)
    trace.wrap(monitor, "generation_completed", "monitor")
    for name in ("on_results", "_transact"):
        trace.wrap(engine.Engine, name)
    for name in ("send", "_reply_built", "_send_frames"):
        trace.wrap(transport.Transport, name)
    computing = thread_runtime.ThreadRuntime.computing

    @contextlib.contextmanager
    def timed_computing(runtime):
        trace.stamp("compute", "b")
        with computing(runtime):
            yield
        trace.stamp("compute", "e")
    thread_runtime.ThreadRuntime.computing = timed_computing

    @contextlib.contextmanager
    def begin(step_connection):  # StepConnection.begin with the commit stamped
        transaction = db.DriverTransaction(step_connection._connection)
        try:
            yield transaction
            trace.stamp("commit", "b")
            step_connection._connection.commit()
            trace.stamp("commit", "e")
        except BaseException:
            step_connection._connection.rollback()
            raise
        for callback in transaction.committed:
            callback()
    db.StepConnection.begin = begin


def serve(out: str, baseline: bool, argv: list[str]) -> int:
    """The server process: ``bench/turnaround.py``'s serve, traced; ``baseline``: with glibc's default top pad."""
    from server import engine

    instrument(Trace(out))
    if baseline:
        keep = engine.keep_freed_memory

        def without_top_pad():
            keep()
            import ctypes
            import ctypes.util

            ctypes.CDLL(ctypes.util.find_library("c")).mallopt(engine.M_TOP_PAD, GLIBC_TOP_PAD)
        engine.keep_freed_memory = without_top_pad
    return turnaround.serve(argv)


def turns(events: list) -> list[list]:
    """The events of each turn that computed a generation: from the RESULTS decoded to the BATCH sent."""
    events = sorted(events, key=lambda e: e[2])
    out, i = [], 0
    while i < len(events):
        if events[i][:2] != ["on_results", "b"]:
            i += 1
            continue
        start = next((k for k in range(i - 1, max(i - 6, -1), -1) if events[k][:2] == ["decode", "b"]), i)
        end = next((k for k in range(i, len(events)) if events[k][:2] == ["send", "e"]), None)
        if end is None:  # the last RESULTS, which finished the thread
            break
        turn = events[start:end + 1]
        computed = [e[2] for e in turn if e[:2] == ["compute", "e"]]
        acked = [e[2] for e in turn if e[:2] == ["_reply_built", "b"]]
        # A turn whose ACK waited for its step (the rig's one thread), not one answered at once (docs/protocol.md
        # §4.5: after a step of a second or more) while the rig waited for a BATCH still being computed.
        if computed and acked and acked[0] > computed[-1] and sum(e[:2] == ["on_results", "b"] for e in turn) == 1:
            out.append(turn)
        i = end + 1
    return out


def stretches(turn: list) -> list[tuple[str, float, tuple | None]]:
    """(label, ms, CPU ms and page faults of the thread for a stamped function) of each consecutive pair of
    timestamps, less the tell, ask and render in it (the event loop may stamp a heartbeat meanwhile)."""
    starts = [e[2] for e in turn if e[:2] == ["compute", "b"]]
    computes = list(zip(starts, [e[2] for e in turn if e[:2] == ["compute", "e"]]))
    out = []
    for a, b in zip(turn, turn[1:]):
        inside = sum(max(0.0, min(b[2], end) - max(a[2], start)) for start, end in computes)
        if a[0] == b[0] == "compute" and (a[1], b[1]) == ("b", "e"):
            continue
        usage = None
        if a[0] == b[0] and a[4] and b[4]:
            usage = (1000 * (b[4][0] - a[4][0]), b[4][1] - a[4][1])
        out.append((f"{a[0]}:{a[1]} -> {b[0]}:{b[1]}", 1000 * (b[2] - a[2] - inside), usage))
    return out


def report(name: str, events: list, shown: int = 14) -> dict[str, np.ndarray]:
    """Print the stretches of ``events``' turns (the largest by p50 share); their times by stretch."""
    by_stretch, usage, overheads = defaultdict(list), defaultdict(list), []
    for turn in turns(events):
        parts = stretches(turn)
        overheads.append(sum(ms for _, ms, _ in parts))
        for label, ms, used in parts:
            by_stretch[label].append(ms)
            if used is not None:
                usage[label].append((ms, *used))
    values = {label: np.array(v) for label, v in by_stretch.items()}
    q = lambda a: " ".join(f"{x:6.2f}" for x in (*np.percentile(a, [50, 90, 99]), a.max()))  # noqa: E731
    print(f"\n{name}: {len(overheads)} turns; the turn besides the compute (RESULTS decoded -> BATCH sent), "
          f"p50 / p90 / p99 / max ms: {q(np.array(overheads))}")
    print(f"  {'stretch':66} {'n':>4} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>6}")
    order = sorted(values, key=lambda k: np.percentile(values[k], 50) * len(values[k]), reverse=True)
    for label in order[:shown]:
        print(f"  {label:66} {len(values[label]):4d} {q(values[label])}")
    for label, rows in usage.items():
        rows.sort(reverse=True)
        worst = ", ".join(f"{ms:.2f} ms: CPU {cpu:.2f} ms, {faults} faults" for ms, cpu, faults in rows[:3])
        print(f"  slowest {label.split(':')[0]}: {worst}")
    return values


def run(generator: str, generations: int, show_ms: float, baseline: bool) -> list:
    """One traced server and one thread's rig loop; the server's timestamps."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trace.jsonl"
        out.touch()
        server = turnaround.Server(Path(tmp) / "data", command=[__file__, "serve", str(out), str(int(baseline))])
        try:
            turnaround.rig_waits(server, "hot-path", generator, 1, generations, 40, show_ms)
            time.sleep(1.5)  # the server writes its last timestamps
        finally:
            server.close()
        return [json.loads(line) for line in out.read_text().splitlines()]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        sys.exit(serve(argv[1], argv[2] == "1", argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="bench-standin-256",
                        help="dcgan-faces, bench-standin-64 or bench-standin-256 (default)")
    parser.add_argument("--generations", type=int, default=60, help="generations per run (default 60)")
    parser.add_argument("--show-ms", type=float, default=300, help="how long the rig shows a batch (default 300)")
    parser.add_argument("--as-served-only", action="store_true", help="skip the baseline run (glibc's top pad)")
    args = parser.parse_args(argv)
    if args.generations < 3 or args.show_ms < 0:
        parser.error("need --generations >= 3 and --show-ms >= 0")
    runs = [("as served", False)] + ([] if args.as_served_only else [("baseline: glibc's default top pad", True)])
    results = {name: report(name, run(args.generator, args.generations, args.show_ms, baseline))
               for name, baseline in runs}
    if len(results) == 2:
        served, base = results.values()
        print("\nas served against the baseline, p90 of each stretch both runs have (the largest differences):")
        shared = [k for k in served if k in base]
        for label in sorted(shared, key=lambda k: abs(np.percentile(base[k], 90) - np.percentile(served[k], 90)),
                            reverse=True)[:5]:
            before, after = np.percentile(base[label], 90), np.percentile(served[label], 90)
            print(f"  {label:66} {before:6.2f} -> {after:6.2f} ms ({before / after:.2f}x)")


if __name__ == "__main__":
    main()
