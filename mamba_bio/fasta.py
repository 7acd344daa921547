"""Indexed FASTA access with pyfaidx.

    FASTA file -> .fai index (pyfaidx) -> Genome -> fetch_ids(chrom, start, end) -> token ids

Coordinates are 0-based, half-open everywhere in this module. Plain and BGZF-compressed FASTA
are read through the index (random access, no full load); plain gzip cannot be indexed and is
refused with the command that fixes it. The index is written beside the FASTA, or into
~/.cache/mamba_bio/fai/ when that folder is read-only (e.g. an installed package).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .errors import FastaFormatError, FastaNotFoundError, InvalidSequenceError, UnknownChromosomeError
from .tokenizer import PAD_ID, encode_array

_GZIP_MAGIC = b"\x1f\x8b"


def _is_plain_gzip(path: Path) -> bool:
    """True for gzip that is not BGZF (BGZF carries a 'BC' extra subfield in every block header)."""
    with open(path, "rb") as fh:
        head = fh.read(18)
    if head[:2] != _GZIP_MAGIC:
        return False
    has_extra = len(head) >= 4 and head[3] & 4
    return not (has_extra and head[12:14] == b"BC")


def _cache_index_name(path: Path) -> str:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mamba_bio" / "fai"
    cache.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    return str(cache / f"{path.name}.{digest}.fai")


def check_fasta_path(path: str | os.PathLike) -> Path:
    """Return `path` as a Path if it names a readable, non-empty, indexable FASTA; raise otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FastaNotFoundError(f"{path}: FASTA file not found")
    if path.stat().st_size == 0:
        raise FastaFormatError(f"{path}: FASTA file is empty")
    if _is_plain_gzip(path):
        raise FastaFormatError(
            f"{path}: plain gzip cannot be indexed for random access; recompress it with "
            f"`gunzip {path.name} && bgzip {path.name[:-3] if path.name.endswith('.gz') else path.name}` "
            "(or just gunzip it)"
        )
    return path


class Genome:
    """The records of one FASTA file, read through its index; picklable (reopens in each process).

    Args:
        path: FASTA file (plain or BGZF).
    Attributes:
        sizes: record name -> length, in file order.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = check_fasta_path(path)
        self._index_name: str | None = None
        self._fasta = None
        self._pid = None
        fasta = self._open()
        self.sizes: dict[str, int] = {name: len(record) for name, record in fasta.items()}
        if not self.sizes:
            raise FastaFormatError(f"{self.path}: no records found")

    def _open(self):
        import pyfaidx

        if self._fasta is not None and self._pid == os.getpid():
            return self._fasta
        kwargs = dict(as_raw=True, sequence_always_upper=False, read_long_names=False, rebuild=False)
        try:
            try:
                fasta = pyfaidx.Fasta(str(self.path), indexname=self._index_name, **kwargs)
            except PermissionError:
                # read-only folder (installed package data, shared storage): keep the index in a cache
                self._index_name = _cache_index_name(self.path)
                fasta = pyfaidx.Fasta(str(self.path), indexname=self._index_name, **kwargs)
        except pyfaidx.FastaIndexingError as err:
            raise FastaFormatError(f"{self.path}: malformed FASTA: {err}") from err
        except pyfaidx.UnsupportedCompressionFormat as err:
            raise FastaFormatError(f"{self.path}: {err}") from err
        except UnicodeDecodeError as err:  # pyfaidx reads the file as UTF-8 text while indexing
            raise FastaFormatError(
                f"{self.path}: not a text FASTA file (undecodable byte 0x{err.object[err.start]:02x}); "
                "is it binary or compressed with something other than gzip/bgzip?"
            ) from err
        except ValueError as err:  # e.g. duplicate record names
            raise FastaFormatError(f"{self.path}: {err}") from err
        self._fasta, self._pid = fasta, os.getpid()
        return fasta

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fasta"] = state["_pid"] = None  # file handles do not travel to worker processes
        return state

    def __contains__(self, chrom: str) -> bool:
        return chrom in self.sizes

    def check_chrom(self, chrom: str, context: str = "") -> int:
        """Length of record `chrom`; UnknownChromosomeError naming the file and a few known names."""
        if chrom not in self.sizes:
            names = list(self.sizes)
            shown = ", ".join(names[:5]) + (f", ... ({len(names)} records)" if len(names) > 5 else "")
            where = f"{context}: " if context else ""
            raise UnknownChromosomeError(f"{where}record {chrom!r} is not in {self.path} (records: {shown})")
        return self.sizes[chrom]

    def fetch(self, chrom: str, start: int, end: int) -> str:
        """Sequence of `chrom`[start:end) as stored (case kept); start/end must lie inside the record."""
        return self._open()[chrom][start:end]

    def fetch_ids(self, chrom: str, start: int, end: int) -> np.ndarray:
        """Token ids of `chrom`[start:end) (L = end - start,), int64.

        Positions outside the record (start < 0 or end > length) are [PAD]: windows are clipped to
        the chromosome ends and padded, and [PAD] targets are ignored by the losses.
        """
        size = self.check_chrom(chrom)
        lo, hi = max(0, start), min(size, end)
        out = np.full(end - start, PAD_ID, dtype=np.int64)
        if hi > lo:
            seq = self.fetch(chrom, lo, hi)
            if len(seq) != hi - lo:
                # the .fai offsets disagree with the bytes on disk: lone '\r' line ends, or a file
                # edited after it was indexed
                raise FastaFormatError(
                    f"{self.path}: record {chrom!r} at {lo}-{hi}: read {len(seq)} bp where the index promises "
                    f"{hi - lo}; check for old Mac ('\\r') line endings, fix them and delete {self.path}.fai"
                )
            try:
                out[lo - start : hi - start] = encode_array(seq)
            except InvalidSequenceError as err:
                raise InvalidSequenceError(f"{self.path}: record {chrom!r} at {lo}-{hi}: {err}") from err
        return out

    def __repr__(self) -> str:
        return f"Genome({str(self.path)!r}, {len(self.sizes)} records, {sum(self.sizes.values())} bp)"
