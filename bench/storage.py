"""What a lock read costs through pploy's storage layer, beside plain sqlite3 and SQLAlchemy Core.

``python -m bench.storage [--quick]`` (JSON on stdout). The baseline, measured in the same run, is
the statement on a bare ``sqlite3`` connection; then the same read through
``pploy.deploy.storage.sqlite.Store.get_lock`` (the statements written once, the dialect
adapter, the record built), and — when SQLAlchemy is importable (``pip install sqlalchemy``; it
is not a dependency of pploy) — through a SQLAlchemy 2 engine (its compiled-statement cache on)
and with the statement built and compiled per call. This is the measurement behind the README's
"Why not SQLAlchemy Core".
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pploy.deploy.domain.records import Lock
from pploy.deploy.storage.sqlite import Store

SELECT = "SELECT * FROM locks WHERE project = ?"


def per_call(fn: Callable[[], Any], calls: int, repeats: int = 3) -> float:
    """Microseconds per call of ``fn``: the median of ``repeats`` runs of ``calls`` calls."""
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(runs)


def sqlalchemy_reads(path: Path, calls: int) -> dict[str, float] | str:
    """The read through SQLAlchemy Core, or why it was not measured."""
    try:
        import sqlalchemy as sa
        from sqlalchemy.dialects import sqlite as sqlite_dialect
    except ImportError:
        return "not measured: SQLAlchemy is not installed (pip install sqlalchemy)"
    metadata = sa.MetaData()
    locks = sa.Table(
        "locks", metadata,
        sa.Column("project", sa.Text, primary_key=True), sa.Column("user", sa.Text),
        sa.Column("gained_at", sa.Float), sa.Column("expires_at", sa.Float),
    )  # fmt: skip
    engine = sa.create_engine(f"sqlite:///{path}")
    raw = sqlite3.connect(path, isolation_level=None)
    dialect = sqlite_dialect.dialect()

    def compiled_per_call() -> Any:
        statement = sa.select(locks).where(locks.c.project == "app").compile(dialect=dialect)
        return raw.execute(str(statement), tuple(statement.params.values())).fetchone()

    with engine.connect() as conn:

        def cached() -> Any:
            return conn.execute(sa.select(locks).where(locks.c.project == "app")).mappings().first()

        out = {
            "sqlalchemy_engine_us": per_call(cached, calls),
            "sqlalchemy_compile_per_call_us": per_call(compiled_per_call, calls),
        }
    raw.close()
    engine.dispose()
    out["sqlalchemy_version"] = sa.__version__  # type: ignore[assignment]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 calls instead of 20,000")
    args = parser.parse_args(argv)
    calls = 1000 if args.quick else 20000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pploy.db"
        store = Store(path)
        store.put_lock(Lock("app", "alice", time.time(), time.time() + 3600))
        raw = sqlite3.connect(path, isolation_level=None)
        baseline = per_call(lambda: raw.execute(SELECT, ("app",)).fetchone(), calls)
        pploy = per_call(lambda: store.get_lock("app"), calls)
        other = sqlalchemy_reads(path, calls)
        raw.close()
        store.close()
    result: dict[str, Any] = {
        "benchmark": "storage: one lock read",
        "calls": calls,
        "sqlite3_us": round(baseline, 2),
        "pploy_store_us": round(pploy, 2),
        "pploy_store_ratio": round(pploy / baseline, 2),
    }
    if isinstance(other, str):
        result["sqlalchemy"] = other
    else:
        version = other.pop("sqlalchemy_version")
        result["sqlalchemy"] = {
            "version": version,
            **{key: round(value, 2) for key, value in other.items()},
            **{
                key.replace("_us", "_ratio"): round(value / baseline, 2)
                for key, value in other.items()
            },
        }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
