"""Domain-free data plumbing shared by `mamba_bio` and `mamba_audio`: manifests and fetching.

    data_manifests/NAME.yaml -> manifest.load_manifest -> Manifest -> fetch.fetch_manifest -> local paths
                                                                       (download -> verify -> archive)

- `manifest`: read and check a manifest YAML (URLs, sizes, sha256, unpacking);
- `download`: resumable HTTP download to `.part`, size/sha256 verification;
- `archive`: atomic, path-safe gunzip / unzip / untar;
- `fetch`: the whole sequence for every file of a manifest, restartable at any point;
- `errors`: ManifestError, ManifestNotFoundError, ChecksumError, ArchiveError.
"""

from .errors import ArchiveError, ChecksumError, ManifestError, ManifestNotFoundError
from .fetch import fetch_manifest
from .manifest import Manifest, ManifestFile, available_manifests, default_data_dir, load_manifest, manifest_dir

__all__ = [
    "ArchiveError",
    "ChecksumError",
    "ManifestError",
    "ManifestNotFoundError",
    "Manifest",
    "ManifestFile",
    "available_manifests",
    "default_data_dir",
    "fetch_manifest",
    "load_manifest",
    "manifest_dir",
]
