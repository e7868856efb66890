"""Re-read what a table landed from some checkpoint on: how a reverted mapping replays what it touched.

Reverting a mapping (``lakegate proposals revert``) leaves a *rewind* in the pipeline's state store:
table ``T``, from checkpoint ``k`` (the first checkpoint the mapping shaped). The next run, once
recovered, carries it out before reading anything:

1. delete from ``T``, its child tables, the dead-letter table and the replay markers every row that
   ``T``'s sources landed in checkpoints >= ``k`` (Iceberg deletes; by filter, so a retry is harmless);
2. write a committed checkpoint record whose positions for those sources, and whose normalizer state
   for ``T``, are those of checkpoint ``k - 1``;
3. mark the rewind done.

The sources then read those records again under the restored contract, which holds them for review
(a person reverted that mapping). A crash between 1 and 2 repeats 1 (nothing new has landed); between
2 and 3 it repeats 1 and 2 from the new record, with the same result. Only sources that can seek back
can be rewound: files can; a database slot or binlog already confirmed cannot, and the rewind is
refused with the reason (the revert itself stands).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lakegate.runtime.state import CheckpointRecord
from lakegate.sources.files import FileSource

if TYPE_CHECKING:
    from lakegate.runtime.pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass
class RewindResult:
    table: str
    from_checkpoint: int
    status: str
    sources: list[str] = field(default_factory=list)
    note: str = ""


def _from_sources(column: str, sources: list[str]) -> str:
    """An Iceberg filter (pyiceberg's SQL-like syntax): rows whose ``column`` names one of ``sources``.

    Source names match ``[a-z][a-z0-9_]*`` (the spec checks), so they need no quoting beyond the literal.
    """
    return "(" + " OR ".join(f"{column} LIKE '{name}:%'" for name in sources) + ")"


def carry_out_rewinds(pipeline: Pipeline, record: CheckpointRecord) -> tuple[CheckpointRecord, list[RewindResult]]:
    """Carry out the pending rewinds on top of ``record`` (the last checkpoint); returns the record to
    restore from and what was done."""
    results: list[RewindResult] = []
    for rewind_id, table, start, reason in pipeline.state.pending_rewinds():
        sources = pipeline.sources_of(table)
        names = [s.name for s in sources]
        if not sources or any(not isinstance(s, FileSource) for s in sources):
            note = f"{table}'s sources {names or '(none)'} cannot seek back; nothing re-read"
            pipeline.state.finish_rewind(rewind_id, "refused", note)
            results.append(RewindResult(table, start, "refused", names, note))
            continue
        base = pipeline.state.get(start - 1) if start > 1 else None
        if start > 1 and base is None:
            note = f"checkpoint {start - 1} is no longer kept; nothing re-read"
            pipeline.state.finish_rewind(rewind_id, "refused", note)
            results.append(RewindResult(table, start, "refused", names, note))
            continue
        touched = [t for t in record.tables if t == table or t.startswith(f"{table}__")]
        for name in touched:
            iceberg = pipeline.tables.get(name)
            if iceberg is not None:
                iceberg.delete(f"_lg_checkpoint >= {start} AND {_from_sources('_lg_source', names)}")
        dead_letters = pipeline.tables.get(pipeline.spec.dead_letter_table)
        if dead_letters is not None:
            dead_letters.delete(
                f"checkpoint_id >= {start} AND target_table = '{table}' AND {_from_sources('source', names)}"
            )
        markers = pipeline.tables.get(f"{pipeline.spec.dead_letter_table}_replays")
        if markers is not None:
            markers.delete(f"_lg_checkpoint >= {start} AND target_table = '{table}'")
        positions = dict(record.source_positions)
        state = dict(record.operator_state)
        for name in names:
            earlier = base.source_positions.get(name) if base else None
            if earlier is None:
                positions.pop(name, None)
            else:
                positions[name] = earlier
        if base is not None and table in base.operator_state:
            state[table] = base.operator_state[table]
        else:
            state.pop(table, None)
        record = CheckpointRecord(
            checkpoint_id=record.checkpoint_id + 1,
            status="committed",
            source_positions=positions,
            files={},
            operator_state=state,
            counts={},
            tables=list(record.tables),
        )
        pipeline.state.put_committed(record)
        pipeline.state.finish_rewind(rewind_id, "done", f"re-reading {names} from checkpoint {start - 1}")
        log.warning("%s: re-reading what %s landed since checkpoint %d (%s)", table, names, start, reason)
        results.append(RewindResult(table, start, "done", names, reason))
    return record, results
