"""Shared settings and helpers for the reader fuzz tests.

Every reader is fuzzed under one deterministic hypothesis profile (`FUZZ`): the examples come from
a fixed seed, so a failure reproduces exactly and CI never flakes; nothing is written to a
hypothesis database beside the repository.
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# No deadline: the first pyfaidx/soundfile call pays for imports and index building, which says
# nothing about a hang; `no_hang` below catches real hangs instead.
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Bytes that break text readers in different ways: NUL, stray CR, a lone UTF-8 continuation
# byte, a Latin-1 letter, a BOM, quotes (csv quoting), tabs and commas (delimiters).
AWKWARD_TEXT = st.sampled_from(["\x00", "\r", "\t", ",", '"', "'", "#", ">", " ", "\u00e9", "\ufeff", "-", ":"])
AWKWARD_BYTES = st.sampled_from([b"\x00", b"\x80", b"\xff\xfe", b"\xe9", b"\xef\xbb\xbf", b"\r", b"\t", b'"'])


class Hang(BaseException):
    """Raised inside a reader that runs too long; a BaseException so no `except Exception` hides it."""


@contextlib.contextmanager
def no_hang(seconds: float = 10.0) -> Iterator[None]:
    """Fail (with `Hang`) if the body runs longer than `seconds`: a reader must never loop forever."""

    def _alarm(signum, frame):
        raise Hang(f"reader still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def written(name: str, data: bytes) -> Iterator[Path]:
    """`data` written to a fresh temporary folder as `name` (a new folder per example, so no
    index or side file of one example leaks into the next)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        yield path


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """`valid` with a few bytes flipped, inserted or deleted, or cut short: near-misses of a good
    file reach deeper into a parser than random noise does."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.one_of(AWKWARD_BYTES, st.binary(min_size=1, max_size=4)))
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)
