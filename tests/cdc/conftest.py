"""CDC fixtures: one private PostgreSQL per test session (its startup is paid once)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cdc.pg_server import PostgresServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The DSN of a private PostgreSQL with ``wal_level=logical`` (fails, never skips, without binaries)."""
    with PostgresServer() as server:
        yield server.dsn
