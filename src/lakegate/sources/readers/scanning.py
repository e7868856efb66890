"""Vectorized scans that find record boundaries in a chunk of bytes, without a Python step per byte.

Finding where records start and end is what lets a reader cut a file into chunks of whole records
and resume between them; numpy keeps that cheap next to Arrow's parsing.
"""

from __future__ import annotations

import numpy as np

_SPACE = np.zeros(256, dtype=bool)
_SPACE[[9, 10, 13, 32]] = True


def first_non_space(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Index of the first non-whitespace byte of each span (``end`` when the span is blank).

    Vectorized over spans, one step per leading whitespace byte; the rare span with a long run of
    leading whitespace is finished in Python.
    """
    first = starts.copy()
    live = np.flatnonzero(first < ends)
    for _ in range(64):
        if live.size == 0:
            return first
        live = live[_SPACE[arr[first[live]]]]
        first[live] += 1
        live = live[first[live] < ends[live]]
    for i in live.tolist():
        span = arr[first[i] : ends[i]].tobytes()
        first[i] = ends[i] - len(span.lstrip(b" \t\r\n"))
    return first


def prefix_parity(mask: np.ndarray) -> np.ndarray:
    """For each byte, whether an odd number of ``mask`` bytes occur up to and including it.

    Works on packed bits: a prefix XOR inside each 64-bit word by shifts, then a carry across words,
    several times faster than a byte-wise cumulative sum.
    """
    packed = np.packbits(mask, bitorder="little")
    words = np.zeros((packed.size + 7) // 8, dtype="<u8")
    words.view(np.uint8)[: packed.size] = packed
    for shift in (1, 2, 4, 8, 16, 32):
        words ^= words << np.uint64(shift)
    carry = np.bitwise_xor.accumulate(words >> np.uint64(63))
    words[1:] ^= carry[:-1] * np.uint64(0xFFFF_FFFF_FFFF_FFFF)
    return np.unpackbits(words.view(np.uint8), count=mask.size, bitorder="little").view(bool)


def scan_top_level(arr: np.ndarray, in_array: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut points between top-level records of a JSON text, found with vectorized bracket counting.

    Records are the elements of a top-level array, or top-level objects. Returns, per cut, the end of
    the span before it, the start of the span after it, and whether the scan resumes inside the
    top-level array there. ``in_array`` is the state at ``arr[0]`` (always outside a string).
    """
    quote = arr == 34
    if np.count_nonzero(arr == 92):
        backslashes = np.flatnonzero(arr == 92)
        index = np.arange(backslashes.size)
        run_start = np.ones(backslashes.size, dtype=bool)
        run_start[1:] = backslashes[1:] != backslashes[:-1] + 1
        first_of_run = np.maximum.accumulate(np.where(run_start, index, 0))
        escaped = backslashes[(index - first_of_run) % 2 == 0] + 1
        quote[escaped[escaped < arr.size]] = False
    outside = ~prefix_parity(quote)
    del quote
    folded = arr & 0xDF  # maps { } onto [ ]
    outside &= (folded == 91) | (folded == 93) | (arr == 44)
    del folded
    structural = np.flatnonzero(outside)
    del outside
    chars = arr[structural]
    opens = (chars == 123) | (chars == 91)
    delta = opens.astype(np.int64) - ((chars == 125) | (chars == 93))
    running = int(in_array) + np.cumsum(delta)
    depth_after = running - np.minimum(np.minimum.accumulate(running), 0) if running.size else running
    depth_before = np.concatenate(([int(in_array)], depth_after[:-1])) if running.size else running
    top_open = opens & (depth_before == 0)
    last_top = np.maximum.accumulate(np.where(top_open, np.arange(chars.size), -1)) if chars.size else chars
    top_char = np.where(last_top >= 0, chars[np.maximum(last_top, 0)], 91 if in_array else 0)
    in_top_array = (depth_before == 1) & (top_char == 91)
    array_open = (chars == 91) & (depth_before == 0)
    array_sep = (chars == 44) & in_top_array
    array_close = (chars == 93) & in_top_array
    object_open = (chars == 123) & (depth_before == 0)
    object_close = (chars == 125) & (depth_before == 1) & (top_char == 123)
    is_cut = array_open | array_sep | array_close | object_open | object_close
    where = structural[is_cut].astype(np.int64)
    zero_width = (object_open | object_close)[is_cut]
    ends = np.where(object_close[is_cut], where + 1, where)
    starts = np.where(zero_width, ends, where + 1)
    return ends, starts, (array_open | array_sep)[is_cut]
