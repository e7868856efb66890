"""One flat hierarchy of errors: each says what failed, where, and whether a retry can help."""

from __future__ import annotations


class LakegateError(Exception):
    """Base of every error lakegate raises on purpose."""


class TerminalError(LakegateError):
    """Retrying will not help: the input, the configuration or the code must change."""


class TransientError(LakegateError):
    """A retry may succeed (a commit conflict, a server that went away)."""


class ConfigError(TerminalError):
    """A pipeline spec (or CLI option) is invalid; the message names the file and the field."""


class ReconciliationError(TerminalError):
    """Counts do not add up: records read != rows landed + records dead-lettered."""


class StageError(TerminalError):
    """A stage failed on a batch; carries the stage name and the checkpoint id."""

    def __init__(self, stage: str, checkpoint_id: int, message: str) -> None:
        super().__init__(f"stage {stage!r} failed in checkpoint {checkpoint_id}: {message}")
        self.stage = stage
        self.checkpoint_id = checkpoint_id


class MissingExtraError(TerminalError):
    """An optional integration is used without its extra installed."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"{module} is not installed: pip install 'lakegate[{extra}]'")
