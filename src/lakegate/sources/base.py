"""The Source protocol every connector implements."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from lakegate.core.batch import SourceBatch


@runtime_checkable
class Source(Protocol):
    """A resumable reader of records.

    The runtime calls ``restore`` once with the position recorded by the last committed checkpoint
    (``None`` on a first run), then ``poll`` repeatedly. ``position()`` is what a checkpoint records;
    ``acknowledge`` is called only after the checkpoint holding that position is committed to Iceberg
    (the last step of the protocol), so a crash before it replays records instead of losing them.
    """

    name: str

    def restore(self, position: dict[str, Any] | None) -> None:
        """Seek to a recorded position (or the beginning)."""
        ...

    def poll(self) -> SourceBatch | None:
        """The next batch, or ``None`` when nothing is available right now."""
        ...

    def position(self) -> dict[str, Any]:
        """The resumable position after the last batch returned by ``poll`` (JSON-serializable)."""
        ...

    def is_idle(self) -> bool:
        """True when every record available so far has been returned by ``poll``."""
        ...

    def acknowledge(self, position: dict[str, Any]) -> None:
        """The records up to ``position`` are durably committed downstream."""
        ...

    def close(self) -> None:
        """Release files, connections and threads."""
        ...
