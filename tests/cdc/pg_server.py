"""A private PostgreSQL for tests and benchmarks: initdb in a temp dir, logical WAL, a free port, torn down after.

Uses the installed server binaries (``initdb``, ``pg_ctl``); when they are missing it fails with the
package to install rather than skipping, so a CI without PostgreSQL cannot pass silently.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

SEARCH_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")


def find_binary(name: str) -> str:
    """The path of a PostgreSQL server binary.

    Raises:
        RuntimeError: not installed (names the apt package).
    """
    for directory in SEARCH_DIRS:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise RuntimeError(
        f"PostgreSQL server binary {name!r} not found in {', '.join(SEARCH_DIRS)} or PATH: "
        "install the apt package postgresql-15 (apt-get install postgresql-15)"
    )


def _server_user() -> dict[str, object]:
    """initdb refuses to run as root: as root, run the server binaries as the ``postgres`` user."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError as err:
        raise RuntimeError("as root, a 'postgres' user is needed (the apt package postgresql-15 creates it)") from err
    return {"user": entry.pw_uid, "group": entry.pw_gid}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """``with PostgresServer() as server: server.dsn`` — a throwaway cluster with ``wal_level=logical``."""

    def __init__(self, extra_settings: dict[str, str] | None = None) -> None:
        self.extra_settings = extra_settings or {}
        self.directory: Path | None = None
        self.port = 0
        self.dsn = ""

    def start(self) -> PostgresServer:
        """Initialise and start the cluster (about 1-3 s).

        Raises:
            RuntimeError: the binaries are missing or the server does not start (with its log).
        """
        initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        self.directory = Path(tempfile.mkdtemp(prefix="lakegate-pg-"))
        data, sockets = self.directory / "data", self.directory / "sock"
        sockets.mkdir()
        run_as = _server_user()
        if run_as:
            for path in (self.directory, sockets):
                os.chown(path, int(run_as["user"]), int(run_as["group"]))  # type: ignore[call-overload]
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        init = subprocess.run(
            [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
            capture_output=True, text=True, env=env, check=False, **run_as,  # type: ignore[call-overload]
        )  # fmt: skip
        if init.returncode:
            raise RuntimeError(f"initdb failed: {init.stderr or init.stdout}")
        self.port = _free_port()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{sockets}'",
            "wal_level": "logical",
            "max_replication_slots": "16",
            "max_wal_senders": "16",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "64MB",
            "max_connections": "50",
            "wal_sender_timeout": "60s",
            **self.extra_settings,
        }
        with (data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        started = subprocess.run(
            [pg_ctl, "-D", str(data), "-l", str(self.directory / "server.log"), "-w", "-t", "60", "start"],
            capture_output=True, text=True, env=env, check=False, **run_as,  # type: ignore[call-overload]
        )  # fmt: skip
        if started.returncode:
            log = (self.directory / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{log}")
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory."""
        if self.directory is None:
            return
        data = self.directory / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [find_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True, check=False, **_server_user(),  # type: ignore[call-overload]
            )  # fmt: skip
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
