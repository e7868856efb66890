"""``lakegate proposals ...`` and ``lakegate audit``: review schema changes and read the decision log."""

from __future__ import annotations

from typing import Any


def add_schema_commands(subparsers: Any) -> None:
    """Register the ``proposals`` and ``audit`` commands on the main parser's subparsers."""
