"""How pploy's database is opened: the engine the config names.

What pploy asks of a database, :class:`~pploy.deploy.domain.records.Storage`, is declared in the
domain (re-exported here); :class:`~pploy.deploy.storage.sql.SqlStore` implements it once, and
its engines :class:`~pploy.deploy.storage.sqlite.Store` (SQLite, the default) and
:class:`~pploy.deploy.storage.postgres.PgStore` (PostgreSQL) carry its statements.
"""

from __future__ import annotations

from pathlib import Path

from pploy.configfile import ConfigError
from pploy.deploy.domain.records import Storage as Storage
from pploy.deploy.domain.records import StoreUnavailable
from pploy.deploy.storage.sqlite import Store


def open_store(database: str | None, workdir: Path) -> Storage:
    """The store ``database`` names: a ``postgresql://`` URL, or None for ``<workdir>/pploy.db``.

    A database that cannot be reached (refused, silent, unknown host) is a ConfigError naming
    it in one line (``pploy serve`` prints it and exits 1), not a traceback."""
    if database:
        try:
            from pploy.deploy.storage.postgres import PgStore  # psycopg is needed only then
        except ImportError as exc:
            raise RuntimeError(
                f"database: a postgresql:// URL needs psycopg ({exc}): "
                "pip install 'pploy[postgres]'"
            ) from exc
        try:
            return PgStore(database)
        except StoreUnavailable as exc:
            raise ConfigError(f"database: {exc.message}") from None
    return Store(workdir / "pploy.db")
