"""`fetch_manifest`: every file of a manifest downloaded (or located), verified and unpacked.

    Manifest -> for each file: download to NAME.part -> verify size/sha256 -> rename to NAME
             -> unpack (gunzip / unzip / untar into FOLDER.part -> rename to FOLDER)

Files already there are verified again instead of downloaded; a missing unpacked file or folder
is unpacked again from the verified download. So a fetch that failed or was interrupted at any
point is finished by running it again, and a checksum mismatch deletes the bad download.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import archive
from .download import download, verify
from .errors import ChecksumError, ManifestError
from .manifest import Manifest, ManifestFile


def _fetch_file(item: ManifestFile, dest_dir: Path, timeout: float, progress: bool) -> tuple[Path, str, bool]:
    """(path of the verified download, its sha256, whether it was downloaded now)."""
    target = dest_dir / item.name
    if target.is_file():
        return target, verify(target, item.size, item.sha256, str(target)), False
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest_dir / f"{item.name}.part"
    download(item.url, part, timeout, progress)
    try:
        digest = verify(part, item.size, item.sha256, f"{item.url} (saved as {part})")
    except ChecksumError:
        part.unlink(missing_ok=True)  # a corrupt partial file must not be resumed
        raise
    os.replace(part, target)
    return target, digest, True


def _unpack(item: ManifestFile, target: Path, progress: bool) -> Path:
    """Unpack `target` as the manifest says (once); return what the user should open."""
    final = target.parent / item.final_name
    done = final.is_file() if item.unpack == "gunzip" else final.is_dir()
    if done:
        return final
    if progress:
        print(f"{item.unpack} {target} -> {final}", file=sys.stderr, flush=True)
    if item.unpack == "gunzip":
        archive.gunzip(target, final)
    else:
        archive.UNPACKERS[item.unpack](target, final, item.extract)
    return final


def fetch_manifest(
    manifest: Manifest,
    dest_dir: str | os.PathLike,
    package_dir: Path | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> dict:
    """Download (or, for bundled files, locate under `package_dir`) every file and verify it.

    Returns {"name", "dir", "sha256_verified", "files": [{"name", "path", "sha256",
    "sha256_verified", "size_verified", "verified", "downloaded"}]}. `sha256_verified` is False
    for a file whose manifest gives no sha256 (the computed one is reported, so it can be pinned)
    and, at the top, unless every file was verified; `verified` is the same per-file value, kept
    for older callers. `path` is the unpacked file or folder when the manifest unpacks.
    """
    dest_dir = Path(dest_dir)
    results = []
    for item in manifest.files:
        downloaded = False
        if item.bundled:
            if package_dir is None:
                raise ManifestError(f"{manifest.path}: {item.name} is bundled, but no package folder was given")
            target = package_dir / item.bundled
            if not target.is_file():
                raise ManifestError(f"{manifest.path}: bundled file {target} is missing from the package")
            digest, path = verify(target, item.size, item.sha256, str(target)), target
        else:
            target, digest, downloaded = _fetch_file(item, dest_dir, timeout, progress)
            path = _unpack(item, target, progress) if item.unpack else target
        results.append(
            {
                "name": item.name,
                "path": str(path),
                "sha256": digest,
                "sha256_verified": bool(item.sha256),
                "size_verified": item.size is not None,
                "verified": bool(item.sha256),
                "downloaded": downloaded,
            }
        )
    return {
        "name": manifest.name,
        "dir": str(dest_dir),
        "sha256_verified": all(f["sha256_verified"] for f in results),
        "files": results,
    }
