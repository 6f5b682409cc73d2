"""Running jobs: the script under a pty, contained; its log, its followers, its timeline; the
jobs of several instances sharing a database. Imports the domain and the storage engines,
never the web (tests/test_architecture.py)."""
