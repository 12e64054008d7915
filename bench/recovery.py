"""What a server crash costs the animal: the rig's gap across a SIGKILL of ``actmax serve`` and its restart at
once, against the least any restart of a server that renders with torch pays.

Runs ``actmax serve`` and ``actmax rig sim`` in their own processes on loopback, with a one-thread session (DCGAN,
CMA, ``--population`` images and 2 references; the rig shows each batch for ``--show-ms``). ``--kills`` times, at
a random moment of a show or a step, it kills the server with SIGKILL and starts it again at once on the same data
folder and ports, as a supervisor (systemd, Docker's restart policy) would. Per kill, from the rig's record of its
presentations (``--record``): the first onset the restarted server brought (the first stamped after the restart
began; a batch the killed server sent just before it died may still be shown after the kill), the gap before it
from the onset before that (no new image on the screen for that long), and the restart's parts: the command to
``/health`` answering, and from then to that onset (the rig saying HELLO again, the thread's runtime rebuilt, the
owed batch sent). The baseline, run in this process before each kill: a fresh interpreter importing the engine
(``python -c "import server.engine"``, torch with it), which any restart pays before it can render. On a failure
the folder with the server's and the rig's logs is kept, and named.

    python bench/recovery.py [--kills 3] [--population 20] [--show-ms 300] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RIG = "recovery-rig"


def import_seconds() -> float:
    """Seconds a fresh interpreter takes to import the engine (and torch)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import server.engine"], check=True)
    return time.perf_counter() - start


def onsets(record: Path) -> np.ndarray:
    """The onsets (rig clock, unix s) of every presentation the rig recorded so far, sorted."""
    lines = record.read_text(encoding="utf-8").splitlines() if record.exists() else []
    return np.sort([json.loads(line)["onset"] for line in lines if line.strip()])


def kill_gaps(kills: int, population: int, show_ms: float, seed: int | None = None) -> np.ndarray:
    """Kill and restart the server ``kills`` times while its rig shows batches; per kill (seconds): the engine's
    import (the baseline), restart -> /health, /health -> the restarted server's first onset, the kill -> that onset,
    and the rig's gap (the onset before it -> it)."""
    from server.launch import ServerProcess, server_with_sim_rig

    moments = random.Random(seed)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="actmax-recovery-"))
    record, logs = tmp / "shown.jsonl", f"{tmp / 'data' / 'server.log'} and {tmp / 'rig.log'}"
    server = ServerProcess(tmp / "data", secrets.token_urlsafe(16))
    with server_with_sim_rig(server, RIG, ["blocks.6:67"], tmp / "rig.log",
                             extra=["--record", str(record), "--delay", str(show_ms / 1000)]) as (api, rig):
        try:
            api.post("/sessions", {
                "name": "recovery", "rig": RIG, "references": {"source": "skimage", "count": 2},
                "threads": [{"name": "t", "generator": "dcgan-faces", "optimizer": "cma",
                             "optimizer_params": {"population": population}, "objective": {"channels": [0]},
                             "n_generations": 10_000}]})
            for k in range(kills):
                baseline = import_seconds()
                shown = len(onsets(record))
                while len(onsets(record)) < shown + population:  # at least one batch shown since the last kill
                    if rig.poll() is not None:
                        raise SystemExit(f"the simulated rig stopped; see {logs}")
                    time.sleep(0.05)
                time.sleep(moments.uniform(0.0, 2 * (show_ms / 1000 + 0.1)))  # in a show or a step
                killed = time.time()
                server.kill()
                restarting, restarted = time.time(), time.perf_counter()
                api.close()
                api = server.start()
                healthy = time.perf_counter() - restarted
                while not ((shown := onsets(record)) > restarting).any():
                    if time.time() - killed > 120:
                        raise SystemExit(f"the rig showed nothing within 120 s of the kill; see {logs}")
                    time.sleep(0.01)
                first = shown[shown > restarting][0]
                gap, to_onset = first - shown[shown < first][-1], first - killed
                old = (shown > killed) & (shown < first)
                rows.append((baseline, healthy, to_onset - healthy, to_onset, gap))
                print(f"kill {k + 1}: engine import (baseline) {baseline:.2f} s | restart -> /health {healthy:.2f} s, "
                      f"-> first onset {to_onset - healthy:.2f} s more | kill -> first onset {to_onset:.2f} s; "
                      f"the rig's gap {gap:.2f} s" + (f" ({old.sum()} onsets of the killed server's last batch after "
                                                      "the kill)" if old.any() else ""), flush=True)
        finally:
            api.close()
    shutil.rmtree(tmp)  # kept when something failed, for its logs
    return np.array(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--population", type=int, default=20)
    parser.add_argument("--show-ms", type=float, default=300.0, help="how long the rig shows each batch")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill moments (default: random)")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.population < 2 or args.show_ms < 0:
        parser.error("need --kills >= 1, --population >= 2 and --show-ms >= 0")
    baseline, healthy, rest, to_onset, gap = kill_gaps(args.kills, args.population, args.show_ms, args.seed).T
    print(f"\n{args.kills} kill(s), median / max s: the rig's gap {np.median(gap):.2f} / {gap.max():.2f}; "
          f"kill -> first onset {np.median(to_onset):.2f} / {to_onset.max():.2f}, of which restart -> /health "
          f"{np.median(healthy):.2f} / {healthy.max():.2f} and /health -> first onset {np.median(rest):.2f} / "
          f"{rest.max():.2f}")
    print(f"kill -> first onset / the engine's import in a fresh interpreter (median, {np.median(baseline):.2f} s): "
          f"{np.median(to_onset / baseline):.2f}x")


if __name__ == "__main__":
    main()
