"""The SQLite store: ``models`` (ORM schema), ``db`` (connections, migrations), ``archive`` (PNG files
by content hash), ``records`` (the writes shared by the REST API and the engine)."""
