"""A small real session for the export tests: `actmax serve` and `actmax rig sim` as processes, two threads."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from server.launch import ServerProcess, start_sim_rig, stop

RIG = "export-rig"
UNITS = ["blocks.6:67", "blocks.6:12"]  # two channels
LABELS = ["elec67-u1", "elec12-u1"]  # sent by the rig in its HELLO (protocol 1.1)
SETUP = {"monitor": "simulated", "viewing_distance_cm": 57}  # `--setup`'s file, in its HELLO (protocol 1.2)


def session_config() -> dict:
    thread = {"generator": "dcgan-faces", "objective": {"channels": [0]}, "n_generations": 3}
    return {
        "name": "export", "rig": RIG, "animal": "sim-1", "species": "Macaca mulatta", "lab": "Test lab",
        "experimenter": "Doe, Jane", "references": {"source": "skimage", "count": 2},
        "threads": [thread | {"name": "cma", "optimizer": "cma", "optimizer_params": {"population": 6}, "seed": 1},
                    thread | {"name": "ga", "optimizer": "ga", "optimizer_params": {"population": 6}, "seed": 2,
                              "objective": {"expression": "rate(1) + rate(0)"}}],  # the channels' sum
    }


def run_session(data_dir: Path, timeout: float = 300.0) -> tuple[ServerProcess, object, int]:
    """Run the session to the end; returns the still-running server, its client and the session id."""
    server = ServerProcess(data_dir, secrets.token_urlsafe(16))
    api = server.start()
    rig_log = data_dir / "rig.log"
    (data_dir / "setup.json").write_text(json.dumps(SETUP))
    rig = start_sim_rig(server.zmq_endpoint, RIG, UNITS, rig_log, noise_eps=0.1,
                        extra=["--labels", ",".join(LABELS), "--setup", str(data_dir / "setup.json")])
    try:
        session = api.post("/sessions", session_config())
        deadline = time.monotonic() + timeout
        while any(t["status"] != "finished" for t in api.get(f"/sessions/{session['id']}/threads")):
            if time.monotonic() > deadline or rig.poll() is not None or server.process.poll() is not None:
                raise AssertionError(f"the session did not finish:\n{server.log_path.read_text()[-3000:]}\n"
                                     f"{rig_log.read_text()[-2000:]}")
            time.sleep(0.3)
    except BaseException:
        server.stop()
        api.close()
        raise
    finally:
        stop(rig)
    return server, api, session["id"]
