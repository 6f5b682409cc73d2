"""The engines behind ``domain.records.Storage``: SQLite (the default) and PostgreSQL, and
how one is opened. Imports the domain, never the web or the jobs (tests/test_architecture.py)."""
