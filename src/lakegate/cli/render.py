"""Plain-text rendering of Arrow tables and progress lines for the terminal."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

MAX_CELL = 60


def _cell(value: Any) -> str:
    text = "NULL" if value is None else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def render_table(table: pa.Table, limit: int = 50) -> str:
    """Columns aligned, at most ``limit`` rows, with a count footer."""
    shown = table.slice(0, limit).to_pylist()
    headers = table.column_names
    rows = [[_cell(row[h]) for h in headers] for row in shown]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    more = f" (showing {limit})" if table.num_rows > limit else ""
    out.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}{more})")
    return "\n".join(out)
