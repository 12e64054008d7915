"""The benchmark's error type."""

from insilico import InsilicoError


class BenchError(InsilicoError):
    """Bad benchmark arguments or results directory; the message says what to change."""
