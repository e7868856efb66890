"""Connectors: each turns an external system into SourceBatches with resumable positions."""
