"""Reading lakegate's tables back: DuckDB over the Iceberg metadata, an independent reader."""
