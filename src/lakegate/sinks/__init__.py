"""Iceberg output: catalogs, table management, data-file writers and the idempotent committer."""
