"""A throwaway PostgreSQL server on loopback (Debian's ``postgresql`` package), for the tests
and the scaling benchmark: ``initdb`` and ``postgres`` run as the ``postgres`` user (PostgreSQL
refuses root) in a temporary directory it owns, with trust authentication for role ``pploy``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench.procs import free_port, stop_process, tail

BIN = Path("/usr/lib/postgresql/15/bin")


def available() -> str | None:
    """Why no server can be started here, or None when one can."""
    if not (BIN / "postgres").exists():
        return f"PostgreSQL is not installed ({BIN}/postgres is missing): apt install postgresql"
    if os.geteuid() != 0:
        return "starting PostgreSQL as the postgres user needs root"
    return None


class PostgresServer:
    """One ``postgres`` process on a free loopback port; :meth:`url` names a database on it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pploy-pg-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.root / "postgres.log"

    def _as_postgres(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv]

    def start(self, timeout: float = 30) -> PostgresServer:
        shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            self._as_postgres([str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                               "pploy", "--no-sync", "-E", "UTF8"]),
            check=True, capture_output=True,
        )  # fmt: skip
        return self.resume(timeout)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def resume(self, timeout: float = 30) -> PostgresServer:
        """Start the server on its existing data directory and port (after :meth:`halt`);
        returns once it accepts connections (about a second)."""
        with open(self.log, "ab") as out:
            # Popen's user= (not runuser) so that the pid is postgres' own: stop() signals it.
            self.proc = subprocess.Popen(
                [str(BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h",
                 "127.0.0.1", "-k", str(self.root), "-c", "fsync=off", "-c",
                 "max_connections=200"],
                stdout=out, stderr=subprocess.STDOUT, user="postgres", group="postgres",
                extra_groups=[], start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            ready = subprocess.run(
                [str(BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start:\n{tail(self.log)}")
            time.sleep(0.05)

    def halt(self) -> None:
        """Stop the server as ``pg_ctl stop -m fast`` does (SIGINT to the postmaster: clients
        are disconnected, the data directory is kept); :meth:`resume` starts it again."""
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, signal.SIGINT, wait=30)

    def restart(self, timeout: float = 30) -> PostgresServer:
        """:meth:`halt`, then :meth:`resume`: a database blink of about a second."""
        self.halt()
        return self.resume(timeout)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://pploy@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, signal.SIGINT)  # a fast shutdown
        shutil.rmtree(self.root, ignore_errors=True)
