"""PostgreSQL change data capture through logical replication and our own pgoutput decoder.

``PostgresSourceSpec`` configures it, ``PostgresSource`` implements the ``Source`` protocol,
``drop_slot`` and ``slot_status`` serve ``lakegate cdc drop-slot`` and ``lakegate status``.
psycopg2 is the ``cdc`` extra: without it, connecting raises ``MissingExtraError`` naming the extra.
"""

from lakegate.sources.postgres.replication import SlotStatus, drop_slot, slot_status
from lakegate.sources.postgres.source import UNCHANGED_COLUMN, PostgresSource, PostgresSourceSpec

__all__ = ["UNCHANGED_COLUMN", "PostgresSource", "PostgresSourceSpec", "SlotStatus", "drop_slot", "slot_status"]
