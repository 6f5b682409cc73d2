"""``domain.records.Storage``, implemented once: the statements (``sql.py``) and the schema's
steps (``migrations.py``) for both engines, the engines' dialect adapters (``sqlite.py``, the
default; ``postgres.py``) and how one is opened (``opening.py``). Imports the domain, never
the web or the jobs (tests/test_architecture.py)."""
