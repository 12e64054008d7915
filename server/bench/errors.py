"""The benchmark's error type."""

from server import ServerError


class BenchError(ServerError, ValueError):
    """Bad benchmark arguments or results directory; the message says what to change."""
