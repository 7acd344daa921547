"""Exceptions of `core.data`, each subclassing the builtin a caller would catch.

The domain packages re-export them (`mamba_bio.errors.ChecksumError is core.data.errors.ChecksumError`),
so a CLI reports any of them as one line with exit code 2.
"""


class ManifestError(ValueError):
    """Raised if a data manifest is malformed or names no downloadable file."""


class ManifestNotFoundError(FileNotFoundError):
    """Raised if `fetch NAME` names no manifest in data_manifests/."""


class ChecksumError(ValueError):
    """Raised if a downloaded file's size or sha256 differs from its manifest, or it cannot be unpacked."""


class ArchiveError(ChecksumError):
    """Raised if an archive is corrupt or holds a member that would land outside its folder."""
