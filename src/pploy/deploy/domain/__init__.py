"""The rules: locks, permissions, tokens, projects, names, the records pploy keeps and the
``Storage`` interface the engines implement. No HTTP, no SQL: imports neither web, jobs nor
storage (tests/test_architecture.py)."""
