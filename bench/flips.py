"""Flip intervals of the presenter: how regularly `actmax rig present` puts frames on screen.

Opens a pyglet window on $DISPLAY (under Xvfb: `xvfb-run -s "-screen 0 1024x768x24" python
bench/flips.py`), shows --stimuli random images with the presenter's own timing loop, and prints
the flip-interval figures. The baseline, measured in the same run, is bare flips of an empty
window paced the same way: the ratio shows what drawing a stimulus and the photodiode patch adds.

    python bench/flips.py [--stimuli 100] [--duration-ms 100] [--isi-ms 50] [--refresh-hz 60]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import pyglet

    from rig_client.present import Display, Presenter, flip_statistics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stimuli", type=int, default=100)
    parser.add_argument("--duration-ms", type=float, default=100.0)
    parser.add_argument("--isi-ms", type=float, default=50.0)
    parser.add_argument("--refresh-hz", type=float, default=60.0)
    parser.add_argument("--window", default="800x600")
    args = parser.parse_args()
    w, h = (int(v) for v in args.window.split("x"))
    window = pyglet.window.Window(w, h, vsync=True)
    presenter = Presenter(window, Display(57.0, 53.0, w), size_deg=6.0, duration_ms=args.duration_ms,
                          isi_ms=args.isi_ms, refresh_hz=args.refresh_hz)
    empty = [presenter._draw(None) for _ in range(int(args.stimuli * (args.duration_ms + args.isi_ms)
                                                        * args.refresh_hz / 1000))]
    baseline = flip_statistics(np.diff(empty), args.refresh_hz)
    rng = np.random.default_rng(0)
    for _ in range(args.stimuli):
        presenter.show(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), None)
    window.close()
    stats = flip_statistics(presenter.intervals, args.refresh_hz)
    print(f"GL renderer: {pyglet.gl.gl_info.get_renderer()}; nominal frame {1000 / args.refresh_hz:.2f} ms")
    print(f"{'':<22}{'flips':>7}{'mean':>8}{'sd':>7}{'median':>8}{'p99':>8}{'max':>8}{'dropped':>9}")
    for name, s in (("empty window (base)", baseline), ("stimuli", stats)):
        print(f"{name:<22}{s['flips']:>7}{s['mean_ms']:>8.2f}{s['sd_ms']:>7.2f}{s['median_ms']:>8.2f}"
              f"{s['p99_ms']:>8.2f}{s['max_ms']:>8.2f}{s['dropped']:>9}")
    print(f"mean interval ratio stimuli / base: {stats['mean_ms'] / baseline['mean_ms']:.3f}")


if __name__ == "__main__":
    main()
