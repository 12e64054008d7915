"""actmax server: experiment loop, ZeroMQ transport, SQLite store and REST API."""


class ServerError(RuntimeError):
    """Base of the server's errors; raised as such for failures that are not the client's fault."""


class RigInputError(ServerError, ValueError):
    """What a rig sent is well formed but cannot be used here (an unknown batch, a missing channel).

    ``code`` is a protocol error code (``rig_client.protocol.ErrorCode``); the transport answers
    the message with an ERROR carrying it.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = str(code)
        self.message = message


class StorageUnavailable(RigInputError):
    """What a rig sent cannot be stored now (the data folder's disk is full, read-only or failing): answered
    ERROR ``internal``, which the rig keeps and sends again (protocol §6.5)."""

    def __init__(self, message: str):
        super().__init__("internal", message)


class ThreadNotReady(ServerError):
    """A thread cannot start yet (e.g. a Manifold map waits for its source evolution); retried later."""
