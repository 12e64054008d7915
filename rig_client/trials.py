"""Protocol 1.1 trial facts: a `Presentation` that also says how the trial went.

`RigClient.send_results` sends whatever ``to_json`` returns, so a rig sends these like any other
presentation. A 1.1 server stores flagged ones and applies the session's policy; a 1.0 server ignores
the extra fields (docs/protocol.md §4.4) and would score them, so `to_send` leaves flagged
presentations out for one: that server then shows the stimulus again (§4.4.1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from rig_client.client import Presentation
from rig_client.protocol import is_flagged


@dataclasses.dataclass(frozen=True)
class TrialPresentation(Presentation):
    """A presentation with trial facts; ``photodiode_onset`` is on the clock of ``onset``.

    ``baseline_rates`` (spikes/s per channel) were counted in ``baseline_window_ms`` (ms relative
    to onset, both <= 0); give both or neither.
    """

    fixation_broken: bool = False
    dropped_frames: int = 0
    photodiode_onset: float | None = None
    baseline_rates: Sequence[float] | None = None
    baseline_window_ms: tuple[float, float] | None = None

    @property
    def flagged(self) -> bool:
        """Broken fixation or dropped frames: by default not scored and shown again."""
        return is_flagged(self.to_json())

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["fixation_broken"] = bool(self.fixation_broken)
        out["dropped_frames"] = int(self.dropped_frames)
        if self.photodiode_onset is not None:
            out["photodiode_onset"] = float(self.photodiode_onset)
        if self.baseline_rates is not None:
            out["baseline_rates"] = [float(r) for r in self.baseline_rates]
        if self.baseline_window_ms is not None:
            out["baseline_window_ms"] = [float(w) for w in self.baseline_window_ms]
        return out


def to_send(presentations: Sequence[TrialPresentation], minor: int | None) -> list[TrialPresentation]:
    """What to send a server whose WELCOME said ``minor``: all to 1.1, all but the flagged to 1.0."""
    return list(presentations) if (minor or 0) >= 1 else [p for p in presentations if not p.flagged]
