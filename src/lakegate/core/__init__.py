"""Shared value types: batch envelope, dead-letter records, errors, configuration models."""
