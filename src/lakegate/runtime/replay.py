"""Run chosen dead letters through a pipeline again, exactly once (see ``lakegate.sources.replay``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lakegate.core.config import PipelineSpec
from lakegate.runtime.pipeline import Pipeline, RunSummary
from lakegate.sources.replay import DeadLetterReplay, ReplayFilter, pending_dead_letters, replays_table_of


@dataclass
class ReplayResult:
    selected: int
    """Open dead letters chosen and not replayed before."""
    summary: RunSummary | None
    skipped: list[dict[str, Any]] = field(default_factory=list)


def replay_dead_letters(spec: PipelineSpec, selection: ReplayFilter) -> ReplayResult:
    """Replay the selected open dead letters through ``spec``'s pipeline (its regular sources stay put)."""
    with Pipeline(spec) as pipeline:
        dead_letter_table = pipeline.tables.get(spec.dead_letter_table)
        if dead_letter_table is None:
            return ReplayResult(selected=0, summary=None)
        letters = dead_letter_table.scan().to_arrow()
        replays_name = replays_table_of(spec.dead_letter_table)
        replays_table = pipeline.tables.get(replays_name)
        replays: pa.Table | None = replays_table.scan().to_arrow() if replays_table is not None else None
        chosen = pending_dead_letters(letters, replays, selection)
        if chosen.num_rows == 0:
            return ReplayResult(selected=0, summary=None)
        source = DeadLetterReplay(chosen, replays_name)
        for regular in pipeline.sources:
            regular.close()
        pipeline.sources = [source]
        summary = pipeline.run(until_idle=True)
        return ReplayResult(selected=chosen.num_rows, summary=summary, skipped=source.skipped)
