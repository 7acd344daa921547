"""DNA data manifests: `core.data` (read, download, verify, unpack) plus what is genomic about them.

    data_manifests/NAME.yaml -> load_manifest -> Manifest -> fetch -> local paths (+ species.tsv)

The manifest format, resumable downloads, sha256 checks and safe unpacking live in `core.data`
and are re-exported here unchanged. This module adds the DNA parts: bundled files resolve inside
the `mamba_bio` package, downloads default to $MAMBA_BIO_DATA/NAME (else
~/.cache/mamba_bio/data/NAME), and a manifest with `species` (name -> {file}) and `splits`
(split -> records) is checked on load and gets a species.tsv written by `fetch`.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.data import fetch_manifest
from core.data import load_manifest as _load_core_manifest
from core.data.download import sha256_of
from core.data.manifest import Manifest, ManifestFile, available_manifests, is_plain_name, manifest_dir

from .errors import ManifestError

PACKAGE_DIR = Path(__file__).resolve().parent

__all__ = [
    "PACKAGE_DIR",
    "Manifest",
    "ManifestFile",
    "available_manifests",
    "default_data_dir",
    "fetch",
    "load_manifest",
    "local_paths",
    "manifest_dir",
    "sha256_of",
    "write_species_table",
]


def default_data_dir(name: str) -> Path:
    """$MAMBA_BIO_DATA/NAME, else ~/.cache/mamba_bio/data/NAME."""
    from core.data import default_data_dir as _default

    return _default(name, "MAMBA_BIO_DATA", "mamba_bio")


def _check_species_sections(raw: dict, path: Path) -> None:
    """`species` (name -> {file: NAME}) and `splits` (split -> [record, ...]) as `write_species_table` reads them."""
    if "species" not in raw:
        return
    species, splits = raw["species"], raw.get("splits") or {}
    if not isinstance(species, dict) or not all(
        isinstance(info, dict) and is_plain_name(info.get("file")) for info in species.values()
    ):
        raise ManifestError(f"{path}: 'species' must map each species to {{file: NAME}}")
    if not isinstance(splits, dict) or not all(
        isinstance(records, list) and all(isinstance(r, str) for r in records) for records in splits.values()
    ):
        raise ManifestError(f"{path}: 'splits' must map each split to a list of record names")


def load_manifest(name_or_path: str | os.PathLike, directory: Path | None = None) -> Manifest:
    """Read data_manifests/NAME.yaml (or a path to a YAML file) and check its file and species entries."""
    manifest = _load_core_manifest(name_or_path, directory)
    _check_species_sections(manifest.raw, manifest.path)
    return manifest


def fetch(
    name: str,
    dest: str | os.PathLike | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    directory: Path | None = None,
) -> dict:
    """Download (or, for bundled files, locate) every file of manifest `name` and verify it.

    Returns `core.data.fetch_manifest`'s dict ({"name", "dir", "sha256_verified", "files": [...]}),
    plus "species_table" for a manifest with species.
    """
    manifest = load_manifest(name, directory)
    dest_dir = Path(dest) if dest else default_data_dir(manifest.name)
    out = fetch_manifest(manifest, dest_dir, package_dir=PACKAGE_DIR, timeout=timeout, progress=progress)
    if "species" in manifest.raw:
        out["species_table"] = str(write_species_table(manifest, dest_dir))
    return out


def write_species_table(manifest: Manifest, dest_dir: Path) -> Path:
    """species.tsv for a manifest with `species` (name -> {file}) and `splits` (split -> records):
    one row per species and split, listing the split's records that the FASTA actually has."""
    from .fasta import Genome

    splits = manifest.raw.get("splits") or {}
    lines = ["species\tfasta\tsplit\trecords"]
    for species, info in manifest.raw["species"].items():
        genome = Genome(dest_dir / info["file"])
        for split, records in splits.items():
            present = [r for r in records if r in genome]
            if present:
                lines.append(f"{species}\t{info['file']}\t{split}\t{','.join(present)}")
    path = dest_dir / "species.tsv"
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def local_paths(
    name: str, dest: str | os.PathLike | None = None, role: str | None = None, directory: Path | None = None
) -> list[Path]:
    """Where `fetch` puts manifest `name`'s files (optionally only one role); no download, no check."""
    manifest = load_manifest(name, directory)
    dest_dir = Path(dest) if dest else default_data_dir(manifest.name)
    out = []
    for item in manifest.files:
        if role and item.role != role:
            continue
        out.append(PACKAGE_DIR / item.bundled if item.bundled else dest_dir / item.final_name)
    return out
