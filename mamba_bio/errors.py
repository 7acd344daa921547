"""Exceptions raised by mamba_bio, all together, each subclassing the builtin it corresponds to.

Callers may catch the specific error or the builtin; the CLIs report any of them as one line on
stderr with exit code 2 (see `pipelines.common.run_command`). The manifest and download errors
are `core.data`'s, re-exported so `mamba_bio.errors.ChecksumError is core.data.ChecksumError`.
"""

from core.data.errors import ArchiveError, ChecksumError, ManifestError, ManifestNotFoundError  # noqa: F401


class FastaNotFoundError(FileNotFoundError):
    """Raised if a FASTA file named by the user does not exist."""


class FastaFormatError(ValueError):
    """Raised if a FASTA file is empty, malformed, compressed in a way pyfaidx cannot index, or unindexable."""


class BedError(ValueError):
    """Raised if a BED line is malformed, has start >= end, names an unknown split or runs past a chromosome."""


class UnknownChromosomeError(KeyError):
    """Raised if a BED interval, region or species row names a record missing from its FASTA."""

    def __str__(self) -> str:  # KeyError quotes its message; these are sentences
        return str(self.args[0]) if self.args else ""


class WindowError(ValueError):
    """Raised if no window of the requested length fits (window longer than every record/interval)."""


class InvalidSequenceError(ValueError):
    """Raised if a sequence holds characters that are not IUPAC nucleotide codes."""


class TableError(ValueError):
    """Raised if a species.tsv, labelled-sequence table or Genomic Benchmarks folder is malformed."""


class SplitError(ValueError):
    """Raised if a split name is not train, valid or test, or a requested split has no data."""


class CheckpointError(ValueError):
    """Raised if a checkpoint folder or file is missing pieces or was written for another task."""
