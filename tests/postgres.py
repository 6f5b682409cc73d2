"""A real PostgreSQL server for the tests (bench.postgres), started once per session and
shared; each test gets a database of its own (``private_pg_server``: a server of the test's own,
to stop and restart). Import the fixtures into a test module:
``from tests.postgres import pg_server, pg_database  # noqa: F401``."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from bench import postgres
from tests.helpers import skip_or_fail

_names = itertools.count(1)


def _running_server() -> Iterator[postgres.PostgresServer]:
    problem = postgres.available()
    if problem:
        skip_or_fail(problem)
    server = postgres.PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres.PostgresServer]:
    yield from _running_server()


def new_database(server: postgres.PostgresServer) -> str:
    """The URL of a new, empty database on ``server``."""
    return server.create_database(f"t{next(_names)}")


@pytest.fixture
def pg_database(pg_server: postgres.PostgresServer) -> str:
    """The URL of an empty database of this test's own."""
    return new_database(pg_server)


@pytest.fixture
def private_pg_server() -> Iterator[postgres.PostgresServer]:
    """A PostgreSQL server of this test's own, for tests that stop or restart it
    (``halt``/``resume``/``restart``, see tests/reliability/faults.py): the session's
    ``pg_server`` is shared and must stay up."""
    yield from _running_server()
