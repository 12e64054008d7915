"""actmax server: experiment loop, ZeroMQ transport, SQLite store and REST API."""


class ServerError(RuntimeError):
    """A server-side failure that is not the client's fault (store, engine, configuration on disk)."""
