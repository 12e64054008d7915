"""Session export: the tidy tables of a session (``tables``) written as NWB (``nwb``), Parquet or CSV.

``actmax export`` (``cli``) and ``GET /sessions/{id}/export.nwb`` (``server/api/routes/export.py``) both
call ``session_tables`` once and hand the tables to a writer. docs/export.md describes the output.

The names below are imported on first use (PEP 562): every ``actmax`` command builds ``cli``'s parser,
which imports this package, and the tables pull in pandas, SQLAlchemy and the session config (torch).
"""

import importlib

_MODULES = {
    "server.export.tables": ("CLI_HINTS", "ExportError", "SessionRunning", "SessionTables", "session_tables",
                             "write_tables"),
    "server.export.loading": ("NwbUnavailable", "load_session_tables", "nwb_writer"),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)


__all__ = ["ExportError", "NwbUnavailable", "SessionRunning", "SessionTables", "load_session_tables", "nwb_writer",
           "session_tables", "write_tables"]
