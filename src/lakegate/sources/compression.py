"""Decompressed file bytes, read forward only, where damage ends the stream instead of raising.

Readers need the bytes decoded before a truncation (to emit those records) and the point where
decoding stopped (to dead-letter the rest); the standard library's stream readers lose one or the
other, hence these small gzip-member and zstd-frame decoders.
"""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path
from typing import IO, Any, Literal

import zstandard

Compression = Literal["none", "gzip", "zstd"]

READ_SIZE = 1 << 20
"""One read's size where no chunk size applies: skipping, copying, reading to a line's end."""
_COMPRESSED_READ = 128 * 1024
_DAMAGE = (OSError, EOFError, ValueError, zlib.error, zstandard.ZstdError)
"""What a damaged compressed stream raises (BadGzipFile is an OSError)."""


class _Decoder:
    """Decompresses a stream of frames (zstd) or members (gzip) and raises on a truncated one.

    Output decoded before damage is always handed out first; the error is raised on the next read.
    (``gzip.GzipFile`` drops the output of the read that hits a truncation, and ``zstandard``'s stream
    reader ends quietly on one, which would hide lost data.)
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._out = bytearray()
        self._error: Exception | None = None

    def read(self, size: int) -> bytes:
        if not self._out and self._error is not None:
            raise self._error
        while len(self._out) < size and self._error is None:
            try:
                if not self._step(size - len(self._out)):
                    break
            except _DAMAGE as err:
                self._error = err
        with memoryview(self._out) as pending:
            out = bytes(pending[:size])
        del self._out[:size]
        if not out and self._error is not None:
            raise self._error
        return out

    def _step(self, want: int) -> bool:
        """Decode some more into ``_out``; False at a clean end of stream."""
        raise NotImplementedError

    def close(self) -> None:
        self._out = bytearray()


class _ZstdFrames(_Decoder):
    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__(raw)
        self._dctx = zstandard.ZstdDecompressor()
        self._frame: Any = None

    def _step(self, want: int) -> bool:
        if self._frame is None or self._frame.eof:
            feed = self._frame.unused_data if self._frame is not None else b""
            feed = feed or self._raw.read(_COMPRESSED_READ)
            if not feed:
                return False
            self._frame = self._dctx.decompressobj()
        else:
            feed = self._raw.read(_COMPRESSED_READ)
            if not feed:
                raise EOFError("zstd stream ended in the middle of a frame (truncated file)")
        self._out += self._frame.decompress(feed)
        return True


class _GzipMembers(_Decoder):
    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__(raw)
        self._member: Any = None
        self._pending = b""

    def _step(self, want: int) -> bool:
        if self._member is None:
            self._pending = self._pending.lstrip(b"\x00")  # zero padding between members is allowed
            while not self._pending:
                more = self._raw.read(_COMPRESSED_READ)
                if not more:
                    return False
                self._pending = more.lstrip(b"\x00")
            self._member = zlib.decompressobj(wbits=31)
        feed = self._pending or self._raw.read(_COMPRESSED_READ)
        if not feed:
            self._out += self._member.flush()
            raise EOFError("gzip stream ended in the middle of a member (truncated file)")
        self._out += self._member.decompress(feed, max(want, _COMPRESSED_READ))
        self._pending = self._member.unconsumed_tail
        if self._member.eof:
            self._pending, self._member = self._member.unused_data, None
        return True


class DecodedStream(io.RawIOBase):
    """The decompressed bytes of one file, read forward only.

    Damage (a truncated gzip or zstd stream, an I/O error) does not raise: the stream ends early and
    ``damage`` names the error, so a reader can emit what it read and dead-letter the rest.
    """

    def __init__(self, path: Path, compression: Compression) -> None:
        super().__init__()
        self._raw = open(path, "rb")  # closed in close()
        self.raw_size = os.fstat(self._raw.fileno()).st_size
        self.compression = compression
        self.offset = 0
        """Decompressed bytes handed out so far: where decoding got to."""
        self.damage: str | None = None
        self._ended = False
        self._decoder: Any
        if compression == "gzip":
            self._decoder = _GzipMembers(self._raw)
        elif compression == "zstd":
            self._decoder = _ZstdFrames(self._raw)
        else:
            self._decoder = self._raw

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.offset

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` unless the stream ends first; a plain file is read into it without a copy."""
        if self.compression != "none":
            data = self.read(len(buffer))
            buffer[: len(data)] = data
            return len(data)
        if self._ended or not len(buffer):
            return 0
        try:
            count = self._raw.readinto(buffer)
        except _DAMAGE as err:
            self.damage = f"{type(err).__name__}: {err}"
            count = 0
        if not count:
            self._ended = True
        self.offset += count
        return count

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(READ_SIZE), b""))
        parts: list[bytes] = []
        have = 0
        while have < size and not self._ended:
            chunk = self._decode(size - have)
            if not chunk:
                self._ended = True
                break
            parts.append(chunk)
            have += len(chunk)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self.offset += len(out)
        return out

    def _decode(self, size: int) -> bytes:
        try:
            return bytes(self._decoder.read(size))
        except _DAMAGE as err:
            self.damage = f"{type(err).__name__}: {err}"
            return b""

    def skip(self, offset: int) -> None:
        """Move forward to a decompressed offset (a seek for plain files)."""
        if self.compression == "none" and offset <= self.raw_size:
            self._raw.seek(offset)
            self.offset = offset
            return
        while self.offset < offset:
            if not self.read(min(READ_SIZE, offset - self.offset)):
                return

    def close(self) -> None:
        if isinstance(self._decoder, _Decoder):
            self._decoder.close()
        self._raw.close()
        super().close()
