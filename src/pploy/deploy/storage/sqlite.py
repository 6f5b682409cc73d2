"""The SQLite engine (standard library sqlite3, WAL): pploy's default database, one file per
workdir.

Only the dialect adapter lives here (see :mod:`pploy.deploy.storage.sql`, which holds every
statement): the connection, ``pploy_now()`` and ``GREATEST`` registered as functions, JSON as
text, and the driver's errors in pploy's words. Every call is a short statement on one
connection owned by the event loop's thread; SQLite answers in microseconds, so there is no
thread pool and no ORM.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pploy.deploy.domain.records import StoreError, StoreUnavailable
from pploy.deploy.storage import migrations
from pploy.deploy.storage.sql import Duplicate, Executor, Params, Result, SqlStore

T = TypeVar("T")

# SQLite result codes (the low byte of an extended code) that mean the storage, not the
# statement, failed: a full disk, an I/O error, a file that cannot be opened, a lock held
# too long. They are the machine's state, so the answer is 503, not a plain 500.
STORAGE_FAILURES = {
    sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_BUSY,
}  # fmt: skip
# Extended codes of a unique index (or primary key) refusing a row.
UNIQUE_VIOLATIONS = {2067, 1555}  # SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY


def _greatest(a: Any, b: Any) -> Any:
    """PostgreSQL's GREATEST for two values (NULLs ignored, as there)."""
    if a is None or b is None:
        return b if a is None else a
    return max(a, b)


class Store(SqlStore):
    """pploy's records in one SQLite file."""

    shared = False  # one pploy per file (the workdir lock): nothing travels through it
    dialect = "sqlite"
    types: Mapping[str, str] = {
        "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "real": "REAL",
        "bigint": "INTEGER",
        "json": "TEXT",
    }

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.create_function("pploy_now", 0, time.time)
        self.db.create_function("greatest", 2, _greatest, deterministic=True)
        self.execute("PRAGMA journal_mode=WAL")
        self.execute("PRAGMA synchronous=NORMAL")
        self.execute("PRAGMA busy_timeout=5000")
        self.transaction(lambda tx: migrations.migrate(tx, self))

    def close(self) -> None:
        self.db.close()

    def execute(self, sql: str, params: Params = ()) -> Result:
        """One statement; the driver's errors as pploy's (see the module docstring)."""
        try:
            cursor = self.db.execute(sql, params)
            rows = [dict(row) for row in cursor.fetchall()] if cursor.description else []
            return Result(rows, cursor.rowcount)
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", 0)
            if code in UNIQUE_VIOLATIONS:
                raise Duplicate(str(exc)) from exc
            if code & 0xFF in STORAGE_FAILURES:
                raise StoreUnavailable(f"pploy's database is unavailable: {exc}") from exc
            raise StoreError(f"pploy's database refused a statement: {exc}") from exc

    def transaction(self, fn: Callable[[Executor], T]) -> T:
        """``fn(self)`` as one transaction that takes the file's write lock first (``BEGIN
        IMMEDIATE``: another writer waits, up to busy_timeout, rather than failing late)."""
        self.execute("BEGIN IMMEDIATE")
        try:
            out = fn(self)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.execute("COMMIT")
        return out

    def json(self, value: Any) -> Any:
        return json.dumps(value)

    # -- for the migrations --------------------------------------------------------------

    def add_column(self, tx: Executor, table: str, column: str, type_sql: str) -> None:
        if column not in self._columns(tx, table):
            tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {type_sql}")

    @staticmethod
    def _columns(tx: Executor, table: str) -> set[str]:
        return {row["name"] for row in tx.execute(f"PRAGMA table_info({table})")}
