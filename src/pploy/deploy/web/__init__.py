"""HTTP: the route modules, their middleware, rendering, templates and static files.

May import everything below it (jobs, domain, storage) and the wiring's services and actions;
nothing below imports it (tests/test_architecture.py)."""
