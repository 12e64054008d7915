"""REST API: ``deps`` (DB session, token, engine wake-up), ``schemas`` (responses),
``routes`` (one router per resource)."""
