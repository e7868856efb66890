"""lakegate: governed streaming ingestion into Apache Iceberg, exactly once."""

from lakegate.core.errors import ConfigError, LakegateError, TerminalError, TransientError

__all__ = ["ConfigError", "LakegateError", "Pipeline", "TerminalError", "TransientError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Pipeline pulls in the runtime (pyiceberg, duckdb); import it lazily so `import lakegate` stays light.
    if name == "Pipeline":
        from lakegate.runtime.pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)
