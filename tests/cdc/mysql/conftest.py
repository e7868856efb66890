"""A private MariaDB for the MySQL CDC tests, started once per session (fails, never skips, without it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cdc.mariadb_server import MariaDBServer, mariadb_server


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    with mariadb_server() as server:
        yield server
