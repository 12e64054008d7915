"""Offline analysis of actmax sessions: tuning maps, level-set topology, isotropy, GAN geometry.

Submodules are imported explicitly (``from analysis import tuning``); this package stays light.
"""

MAX_RESAMPLES = 1000  # bootstrap resamples of a manifold map a user may ask for (CLI --n-boot, REST n_boot)


class AnalysisError(ValueError):
    """Bad input to an analysis function; the message names the argument and what to pass."""
