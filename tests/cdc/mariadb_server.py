"""A private MariaDB server for tests: its own data directory, socket and loopback port, binlog in ROW format.

It is started from the installed binaries (Debian package ``mariadb-server``) with
``binlog_row_metadata=FULL`` (the row events then carry column names), a replication user with real grants,
and torn down with its files. It never touches the machine's own MariaDB.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql

INSTALL_DB = ("mariadb-install-db", "mysql_install_db")
SERVER = ("mariadbd", "mysqld")
SEARCH_PATH = "/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin"
REPLICATION_USER = "lakegate_cdc"
REPLICATION_PASSWORD = "cdc-secret"  # noqa: S105 - a throwaway server on loopback


class MariaDBUnavailable(RuntimeError):
    """The binaries are missing or the server did not come up."""


def _binary(names: tuple[str, ...]) -> str:
    for name in names:
        found = shutil.which(name, path=SEARCH_PATH)
        if found:
            return found
    raise MariaDBUnavailable(
        f"none of {', '.join(names)} is installed; install the Debian package 'mariadb-server' "
        "(apt-get install mariadb-server) to run the MySQL/MariaDB CDC tests"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MariaDBServer:
    """Where the private server listens, and who may read its binlog."""

    host: str
    port: int
    socket_path: Path
    datadir: Path
    user: str = REPLICATION_USER
    password: str = REPLICATION_PASSWORD

    def connect(self, database: str | None = None, *, autocommit: bool = True) -> pymysql.Connection:
        """An administrative connection as root over the socket."""
        return pymysql.connect(
            unix_socket=str(self.socket_path),
            user="root",
            database=database,
            autocommit=autocommit,
            charset="utf8mb4",
        )

    def execute(self, *statements: str) -> None:
        with contextlib.closing(self.connect()) as connection, connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)

    def query(self, statement: str) -> list[tuple[object, ...]]:
        with contextlib.closing(self.connect()) as connection, connection.cursor() as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall())


@contextlib.contextmanager
def mariadb_server(root: Path | None = None) -> Iterator[MariaDBServer]:
    """Initialize, start, yield and finally stop and delete a private MariaDB.

    Raises:
        MariaDBUnavailable: the binaries are missing (names the apt package) or the server did not start.
    """
    install_db, server_binary = _binary(INSTALL_DB), _binary(SERVER)
    workdir = Path(tempfile.mkdtemp(prefix="lg-mariadb-", dir=root))
    datadir, socket_path, port = workdir / "data", workdir / "mysqld.sock", _free_port()
    process: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [
                install_db,
                "--no-defaults",
                f"--datadir={datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        process = subprocess.Popen(
            [
                server_binary,
                "--no-defaults",
                f"--datadir={datadir}",
                f"--socket={socket_path}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                "--user=root",
                f"--pid-file={workdir / 'mysqld.pid'}",
                f"--log-error={workdir / 'error.log'}",
                f"--log-bin={datadir / 'binlog'}",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
                "--server-id=1",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=48M",
                "--max-connections=100",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = MariaDBServer(host="127.0.0.1", port=port, socket_path=socket_path, datadir=datadir)
        _wait_ready(server, process, workdir / "error.log")
        server.execute(
            f"CREATE USER '{REPLICATION_USER}'@'127.0.0.1' IDENTIFIED BY '{REPLICATION_PASSWORD}'",
            f"GRANT SELECT, RELOAD, REPLICATION SLAVE, BINLOG MONITOR, REPLICATION CLIENT ON *.* "
            f"TO '{REPLICATION_USER}'@'127.0.0.1'",
        )
        yield server
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(server: MariaDBServer, process: subprocess.Popen[bytes], error_log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = error_log.read_text(errors="replace")[-2000:] if error_log.exists() else ""
            raise MariaDBUnavailable(f"mariadbd exited with {process.returncode}:\n{log}")
        try:
            server.execute("SELECT 1")
            return
        except pymysql.err.OperationalError:
            time.sleep(0.1)
    raise MariaDBUnavailable("mariadbd did not accept connections within 60 s")
