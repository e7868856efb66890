"""MySQL/MariaDB change data capture: an initial consistent snapshot, then the binlog in ROW format.

The server needs ``log_bin``, ``binlog_format=ROW``, ``binlog_row_image=FULL`` and
``binlog_row_metadata=FULL`` (row events then carry column names and types), and a user with
``SELECT, REPLICATION SLAVE, REPLICATION CLIENT`` (MariaDB: also ``BINLOG MONITOR``; MySQL snapshots:
``RELOAD``). Requires the ``cdc`` extra (``mysql-replication``, ``pymysql``).

Records follow ``lakegate.core.cdc``: ``origin`` is ``database.table``; ``_lg_op`` is ``r`` (snapshot),
``c``, ``u``, ``d`` or ``t`` (TRUNCATE, one row with null columns); ``_lg_commit_position`` is
``<binlog file>:<offset after the commit, 12 digits>`` (snapshot rows: the snapshot's position), so the
positions of one server sort in commit order; record positions are ``<commit position>:<index>``
(the row's index in its transaction; for snapshot rows its ordinal in the table copy).

Position (what a checkpoint records)::

    {"version": 1,
     "binlog": {"file": "binlog.000003", "pos": 1234, "gtid": "0-1-42"},  # a transaction boundary
     "marks": {"shop.orders": [3, 2000, 5]},   # rows after "binlog" already handed out: (file no., commit, index)
     "shapes": {"shop.orders": {"columns": [["id", "int"], ...], "primary_key": ["id"]}},
     "renames": {...}, "ddl": {...},           # DDL seen whose new shape no row has shown yet
     "snapshot": null | {"point": {...}, "started_at": "...", "tables": [...], "last_key": [...], "ordinal": n}}

Streaming resumes at ``binlog`` (file/offset, or the GTID state with ``position_mode: gtid``) and drops
replayed rows at or before their table's mark. The source keeps no server-side state, so
``acknowledge`` only records the position; ``MySQLSource.status()`` reports whether the binlog file it
needs still exists and how many bytes behind it is.

Snapshot and restarts (``sources/mysql/snapshot.py``): a snapshot interrupted by a crash continues after
the last copied key in a new consistent snapshot, and streaming then starts from the *first* snapshot's
position; changes committed between the two snapshot positions therefore arrive twice (copied and
streamed). No change is lost; duplicates are resolved by key: per primary key, the row with the highest
``_lg_commit_position`` (ties: the higher record position) is the current state, and a ``d`` as the
latest row removes the key. A snapshot that completes without a crash has no overlap: the binlog is read
from exactly the snapshot's position.
"""

from lakegate.sources.mysql.source import MySQLSource, MySQLSourceSpec, binlog_status

__all__ = ["MySQLSource", "MySQLSourceSpec", "binlog_status"]
