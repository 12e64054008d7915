"""``actmax rig sim``: a simulated rig that answers batches with CNN units, noise and injected faults.

It runs the same `RigClient` a real rig imports and decodes the PNGs it receives, so it sees exactly
what a monitor would show. Channel i of every presentation is unit i of ``--unit``, and is labelled by it in
HELLO (``unit_labels``) unless ``--labels`` names the channels.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

from rig_client import RigError
from rig_client.connection import (
    add_connection_arguments, add_weights_argument, connection_keys, non_negative, non_negative_int, positive,
    positive_int, rig_setup,
)

log = logging.getLogger(__name__)

# An EfficientNet-Lite0 unit that random DCGAN faces drive, on average, below the best natural
# reference image (screened in docs/simulated_neurons.md): evolution has something to find.
DEFAULT_UNIT = "blocks.6:67"
CONNECT_TIMEOUT_S = 30  # for the server's WELCOME, at start and after each injected disconnect
LOGGED_UNITS = 8  # units named in the start-up line; a probe's worth (384) are counted
RATE_SCALE = 1.0  # --rate-scale: spikes/s per unit of activation
DRIFT_TAU = 500.0  # --drift-tau: presentations


def parse_unit(text: str):
    """``LAYER:CHANNEL[:X:Y]`` -> `Unit` (e.g. ``blocks.6:67`` or ``blocks.4:7:14:14``)."""
    from rig_client.units import Unit

    parts = text.split(":")
    try:
        if len(parts) == 2:
            return Unit(parts[0], int(parts[1]))
        if len(parts) == 4:
            return Unit(parts[0], int(parts[1]), int(parts[2]), int(parts[3]))
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"unit {text!r}: expected LAYER:CHANNEL or LAYER:CHANNEL:X:Y, e.g. blocks.6:67")


def unit_labels(units: list) -> list[str]:
    """Channel labels naming each unit as ``--unit`` spells it (``blocks.6:67``, ``blocks.4:7:14:14``); a unit
    given again gets ``#2``, ``#3``, ... (HELLO's labels are unique)."""
    labels, seen = [], {}
    for unit in units:
        text = ":".join(str(part) for part in (unit.layer, unit.channel, unit.x, unit.y) if part is not None)
        seen[text] = seen.get(text, 0) + 1
        labels.append(text if seen[text] == 1 else f"{text}#{seen[text]}")
    return labels


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: expected a fraction between 0 and 1")
    return value


def add_parser(subcommands) -> None:
    from rig_client import bridge, present

    rig = subcommands.add_parser("rig", help="rig-side commands: simulated rig, folder bridge, presenter")
    rig_commands = rig.add_subparsers(dest="rig_command", required=True, metavar="RIG_COMMAND")
    sim = rig_commands.add_parser(
        "sim",
        help="answer batches with simulated EfficientNet-Lite0 units",
        description="Connect to an actmax server as a rig and answer every batch with the responses of "
        "EfficientNet-Lite0 units (pre-activation), with optional noise and injected faults.",
    )
    add_connection_arguments(sim, "sim")
    sim.add_argument("--unit", action="append", type=parse_unit, metavar="LAYER:CHANNEL[:X:Y]",
                     help=f"a unit, one per channel, repeatable (default {DEFAULT_UNIT})")
    sim.add_argument("--labels", help="comma-separated channel labels sent in HELLO, one per --unit "
                     "(e.g. elec1-u1,elec2-u1); default: each channel's --unit, e.g. blocks.6:67, so the server "
                     "records which unit made which channel")
    sim.add_argument("--rf", type=float, nargs=3, metavar=("SIZE", "X", "Y"),
                     help="receptive field: image size and centre in pixels of the 224 network input "
                     "(default: the full frame)")
    sim.add_argument("--device", default="cpu", help="torch device (default cpu)")
    sim.add_argument("--seed", type=non_negative_int, default=0, help="seed of the noise and the faults")
    noise = sim.add_argument_group("noise (combined in this order: drift, adaptation, gain, Poisson)")
    noise.add_argument("--noise-eps", type=non_negative, default=0.0,
                       help="multiplicative gain noise: observed = clean * max(0, 1 + eps N(0,1))")
    noise.add_argument("--poisson-window", type=positive, default=None, metavar="SECONDS",
                       help="Poisson spike counts over this window (rates = counts / window); its own setting, not "
                       "the session's response window (default: no Poisson noise)")
    noise.add_argument("--rate-scale", type=positive, default=None,
                       help=f"spikes/s per unit of activation, with --poisson-window (default {RATE_SCALE:g})")
    noise.add_argument("--drift-sd", type=non_negative, default=0.0,
                       help="slow gain drift: stationary SD of the gain (default 0: no drift)")
    noise.add_argument("--drift-tau", type=positive, default=None,
                       help=f"drift time constant in presentations, with --drift-sd (default {DRIFT_TAU:g})")
    noise.add_argument("--adaptation", type=non_negative, default=1.0,
                       help="response factor per earlier showing of the same stimulus (1 = none)")
    faults = sim.add_argument_group("fault injection")
    faults.add_argument("--drop", type=fraction, default=0.0, help="fraction of presentations never reported")
    faults.add_argument("--delay", type=non_negative, default=0.0, help="seconds to wait before answering a batch")
    faults.add_argument("--disconnect-every", type=non_negative_int, default=0, metavar="N",
                        help="every N batches, drop the connection mid-batch and reconnect")
    faults.add_argument("--duplicate", type=fraction, default=0.0,
                        help="fraction of RESULTS messages sent twice")
    sim.add_argument("--record", type=Path, help="append every presentation made to this JSON-lines file")
    sim.set_defaults(func=run)

    screen = rig_commands.add_parser(
        "screen",
        help="list the units of a layer that a generator's random images drive",
        description="Score random images of a generator on every channel of an EfficientNet-Lite0 layer (centre "
        "position) and list the channels whose responses vary most: units worth evolving.",
    )
    screen.add_argument("--layer", default="blocks.6", help="layer, e.g. stem, blocks.6, blocks.6.expand, head (default blocks.6)")
    screen.add_argument("--generator", default="dcgan-faces", help="generator (default dcgan-faces)")
    screen.add_argument("--samples", type=positive_int, default=64, help="random images to score (default 64)")
    screen.add_argument("--top", type=positive_int, default=10, help="units to list (default 10)")
    add_weights_argument(screen)
    screen.add_argument("--seed", type=non_negative_int, default=0)
    screen.set_defaults(func=run_screen)
    bridge.add_parser(rig_commands)
    present.add_parser(rig_commands)


def sim_setup(args: argparse.Namespace) -> dict:
    """HELLO's ``setup``: this program, its network, receptive field, noise, seed and faults, as the flags set them
    (the units are the channel labels, unless ``--labels`` renamed them)."""
    from rig_client.version import package_version

    units = unit_labels(args.unit or [parse_unit(DEFAULT_UNIT)])  # as --unit spells them
    if len(units) > LOGGED_UNITS:  # a probe's worth would not fit in the 4096 bytes
        units[LOGGED_UNITS:] = [f"... {len(units) - LOGGED_UNITS} more"]
    return {"rig_program": f"actmax rig sim {package_version()}", "network": "efficientnet-lite0 (pre-activation)",
            "units": units if args.labels else None, "rf": args.rf, "seed": args.seed,
            "noise": {"eps": args.noise_eps, "poisson_window_s": args.poisson_window,
                      "rate_scale": (args.rate_scale or RATE_SCALE) if args.poisson_window else None,
                      "drift_sd": args.drift_sd, "drift_tau": (args.drift_tau or DRIFT_TAU) if args.drift_sd else None,
                      "adaptation": args.adaptation},
            "faults": {"drop": args.drop, "delay_s": args.delay, "disconnect_every": args.disconnect_every,
                       "duplicate": args.duplicate}}


def build_noise(args: argparse.Namespace):
    """The noise chain the flags ask for, applied in order (an empty chain is noise-free)."""
    from rig_client import noise

    for flag, value, needs, given in (("--rate-scale", args.rate_scale, "--poisson-window SECONDS",
                                       args.poisson_window is not None),
                                      ("--drift-tau", args.drift_tau, "--drift-sd SD", args.drift_sd > 0)):
        if value is not None and not given:
            raise ValueError(f"{flag} {value:g} does nothing without {needs}: add it, or leave {flag} out")
    chain = []
    if args.drift_sd > 0:
        chain.append(noise.Drift(tau=args.drift_tau or DRIFT_TAU, sigma=args.drift_sd))
    if args.adaptation != 1.0:
        chain.append(noise.Adaptation(factor=args.adaptation))
    if args.noise_eps > 0:
        chain.append(noise.GainNoise(args.noise_eps))
    if args.poisson_window is not None:
        chain.append(noise.PoissonNoise(window_s=args.poisson_window, scale=args.rate_scale or RATE_SCALE))
    return noise.Chain(chain)


class SimulatedRig:
    """Answers batches: decode PNGs, score units, add noise, inject faults, send RESULTS."""

    def __init__(self, args: argparse.Namespace):
        import torch

        from rig_client.bridge import channel_labels
        from rig_client.units import ReceptiveField, UnitScorer

        torch.set_num_threads(max(1, torch.get_num_threads()))
        units = args.unit or [parse_unit(DEFAULT_UNIT)]
        # Bad --labels fail first.
        self.labels = channel_labels(len(units), args.labels) if args.labels else unit_labels(units)
        rf = ReceptiveField(int(args.rf[0]), args.rf[1], args.rf[2]) if args.rf else None
        self.args = args
        self.noise = build_noise(args)  # a flag without the one it needs fails before the model loads
        self.scorer = UnitScorer(units, device=args.device, rf=rf)
        self.rng = np.random.default_rng(args.seed)
        self.batches = 0
        self.stop = threading.Event()
        self.record = open(args.record, "a", encoding="utf-8") if args.record else None
        units = [str(unit) for unit in self.scorer.units]
        if len(units) > LOGGED_UNITS:
            units[LOGGED_UNITS - 1:] = [f"… {len(units) - LOGGED_UNITS + 1} more, to {units[-1]}"]
        log.info("simulated rig %r: %d unit(s) %s, noise %s", args.rig, len(self.scorer.units), ", ".join(units),
                 ", ".join(vars(m) and f"{type(m).__name__}{vars(m)}" for m in self.noise.models) or "none")

    def respond(self, batch) -> list:
        """Presentations for a batch (every stimulus, in order) with noisy rates per channel.

        Each stimulus is "shown" when its frame is ready: its onset is stamped then, on this rig's clock.
        """
        import torch

        from rig_client.client import Presentation

        frames, onsets = [], []
        for stimulus in batch.stimuli:
            frames.append(torch.tensor(stimulus.image()).permute(2, 0, 1).float().div(255).unsqueeze(0))
            onsets.append(time.time())
        by_shape: dict[tuple[int, ...], list[int]] = {}  # each image scored as it is, whatever else the batch holds
        for k, frame in enumerate(frames):
            by_shape.setdefault(tuple(frame.shape), []).append(k)
        rates = np.empty((len(frames), len(self.scorer.units)))
        for indices in by_shape.values():
            rates[indices] = self.scorer.score(torch.cat([frames[k] for k in indices]))
        rates = self.noise.apply(rates, self.rng, stimulus_ids=[s.stimulus_id for s in batch.stimuli])
        return [Presentation(stimulus_id=s.stimulus_id, rates=[float(r) for r in row], onset=onset,
                             window_ms=tuple(batch.response_window_ms))
                for s, row, onset in zip(batch.stimuli, rates, onsets, strict=True)]

    def run(self) -> None:
        from rig_client.client import RigClient

        client = self._connect(RigClient)
        try:
            while not self.stop.is_set():
                batch = client.next_batch(timeout=0.5)
                if batch is None:
                    continue
                self.batches += 1
                presentations = self.respond(batch)
                kept = [p for p in presentations if self.rng.random() >= self.args.drop]
                if self.args.delay:
                    self.stop.wait(self.args.delay)
                every = self.args.disconnect_every
                if every and self.batches % every == 0:
                    half = len(kept) // 2
                    self._send(client, batch.batch_id, kept[:half], done=False)
                    log.warning("fault: disconnecting mid-batch %s", batch.batch_id)
                    client.close()
                    client = self._connect(RigClient)  # the server resends what is still owed
                    continue
                self._send(client, batch.batch_id, kept, done=True)
        finally:
            client.close()
            if self.record:
                self.record.close()

    def _connect(self, client_class):
        client = client_class(self.args.endpoint, self.args.rig, channels=len(self.scorer.units),
                              labels=self.labels, setup=rig_setup(self.args, sim_setup(self.args)),
                              **connection_keys(self.args))
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not client.wait_connected(timeout=0.2) and not self.stop.is_set():  # a stop ends the wait at once
            if time.monotonic() >= deadline:
                client.close()
                said = next((e for e in reversed(client.errors) if e["in_reply_to"] == "HELLO"), None)
                if said is not None:  # e.g. rate_limited, which the client retried until now
                    raise RigError(f"the server at {self.args.endpoint} did not take this rig within "
                                   f"{CONNECT_TIMEOUT_S} s; it last answered: {said['code']}: {said['message']}")
                raise RigError(f"no server answered at {self.args.endpoint} within {CONNECT_TIMEOUT_S} s")
        return client

    def _send(self, client, batch_id: str, presentations: list, done: bool) -> None:
        client.send_results(batch_id, presentations, done=done)
        if self.rng.random() < self.args.duplicate:
            log.warning("fault: sending RESULTS of batch %s twice", batch_id)
            client.send_results(batch_id, presentations, done=done)
        if self.record:
            for p in presentations:
                self.record.write(json.dumps({"batch_id": batch_id, **p.to_json()}) + "\n")
            self.record.flush()


def run(args: argparse.Namespace) -> int:
    """Run the rig until Ctrl-C (exit 130) or SIGTERM (exit 0); either stops the model load too."""
    rig, received = None, []

    def stop(signum, frame):
        received.append(signum)
        if rig is None:
            raise KeyboardInterrupt  # still loading the model
        rig.stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    rig = SimulatedRig(args)
    rig.run()
    return 130 if signal.SIGINT in received else 0


def run_screen(args: argparse.Namespace) -> int:
    import generators
    from rig_client.units import screen_units

    source = generators.weights_source(args.generator, os.environ.get("ACTMAX_WEIGHTS_DIR"), args.weights)
    generator = generators.load(args.generator, device="cpu", weights=source)
    ranked = screen_units(generator, args.layer, n_samples=args.samples, rng=np.random.default_rng(args.seed))
    print(f"{len(ranked)} responsive channels of {args.layer} over {args.samples} {args.generator} images; top {args.top}:")
    print(f"{'unit (--unit)':<22} {'mean':>8} {'std':>8} {'max':>8}")
    for s in ranked[: args.top]:
        print(f"{s.unit.layer + ':' + str(s.unit.channel):<22} {s.mean:8.3f} {s.std:8.3f} {s.max:8.3f}")
    return 0
