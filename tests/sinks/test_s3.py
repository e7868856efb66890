"""The sink on S3-compatible storage: moto's server on loopback, written by pyiceberg, read by DuckDB."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import boto3
import pyarrow as pa
import pytest

from lakegate.core.config import CatalogSpec
from lakegate.query.duckdb_reader import query
from lakegate.sinks.catalog import open_catalog
from lakegate.sinks.commit import commit_checkpoint
from lakegate.sinks.tables import TableManager
from lakegate.sinks.writer import DataFileWriter


@pytest.mark.integration
def test_commit_to_s3_and_read_back_with_duckdb(tmp_path: Path, s3_server: dict[str, str]) -> None:
    boto3.client(
        "s3",
        endpoint_url=s3_server["s3.endpoint"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket="lakegate-test")
    spec = CatalogSpec(warehouse="s3://lakegate-test/warehouse", properties=s3_server)
    catalog = open_catalog(spec, tmp_path)
    rows = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "_lg_event_time": pa.array(
                [datetime(2026, 1, d, tzinfo=UTC) for d in (1, 1, 2)], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    table = TableManager(catalog, "ns").ensure("events", rows.schema, "day")
    assert table.location().startswith("s3://lakegate-test/")
    writer = DataFileWriter(table, "p", 1)
    writer.write(rows)
    commit_checkpoint(table, writer.close(), pipeline="p", checkpoint_id=1, source_positions="{}")

    table.refresh()
    assert sorted(table.scan().to_arrow().column("id").to_pylist()) == [1, 2, 3]
    result = query(catalog, "SELECT count(*) AS n, sum(id) AS s FROM ns.events", s3_server)
    assert result.to_pylist() == [{"n": 3, "s": 6}]
