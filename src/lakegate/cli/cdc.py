"""``lakegate cdc ...``: change-data-capture housekeeping (replication slots, binlog positions)."""

from __future__ import annotations

from typing import Any


def add_cdc_commands(subparsers: Any) -> None:
    """Register the ``cdc`` commands on the main parser's subparsers."""
