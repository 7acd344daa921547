"""Data manifests (data_manifests/*.yaml) and `fetch`: download, verify, rename.

    data_manifests/NAME.yaml -> load_manifest -> Manifest(files=[ManifestFile...]) -> fetch -> local paths

A manifest lists files with `url`, `size` and `sha256` (null where the provider publishes none:
`fetch` then reports the sha256 it computed, so you can pin it), an optional `unpack: gunzip`
(pyfaidx needs plain or BGZF FASTA), and free-form `splits`, `licence`, `source` sections.
Bundled files carry `bundled: <path inside mamba_bio>` instead of a URL and are only verified.

Downloads stream to `<name>.part` (resumed with an HTTP Range request when a partial file is
there), are checked against size and sha256, and only then renamed to `<name>`: a file with the
final name is always complete and verified.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ChecksumError, ManifestError, ManifestNotFoundError

PACKAGE_DIR = Path(__file__).resolve().parent
_CHUNK = 1 << 20


def manifest_dir() -> Path:
    """$MAMBA_DATA_MANIFESTS, else the repository's data_manifests/ beside the package."""
    env = os.environ.get("MAMBA_DATA_MANIFESTS")
    return Path(env) if env else PACKAGE_DIR.parent / "data_manifests"


def default_data_dir(name: str) -> Path:
    """$MAMBA_BIO_DATA/NAME, else ~/.cache/mamba_bio/data/NAME."""
    root = os.environ.get("MAMBA_BIO_DATA")
    return (Path(root) if root else Path.home() / ".cache" / "mamba_bio" / "data") / name


@dataclass
class ManifestFile:
    name: str
    url: str | None = None
    size: int | None = None
    sha256: str | None = None
    unpack: str | None = None  # "gunzip": also write the decompressed file (name without .gz)
    bundled: str | None = None  # path inside the mamba_bio package, for files shipped with it
    role: str | None = None  # fasta, bed, ... (informational)

    @property
    def final_name(self) -> str:
        return self.name[:-3] if self.unpack == "gunzip" and self.name.endswith(".gz") else self.name


@dataclass
class Manifest:
    name: str
    path: Path
    files: list[ManifestFile] = field(default_factory=list)
    raw: dict = field(default_factory=dict)


def available_manifests(directory: Path | None = None) -> list[str]:
    directory = directory or manifest_dir()
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def load_manifest(name_or_path: str | os.PathLike, directory: Path | None = None) -> Manifest:
    """Read data_manifests/NAME.yaml (or a path to a YAML file) and check its file entries."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        path = candidate
    else:
        directory = directory or manifest_dir()
        path = directory / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(available_manifests(directory)) or "none"
            raise ManifestNotFoundError(f"no data manifest named {str(name_or_path)!r} in {directory} (known: {known})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("files"), list):
        raise ManifestError(f"{path}: expected a mapping with a 'files' list")
    files = []
    allowed = set(ManifestFile.__dataclass_fields__)
    for i, entry in enumerate(raw["files"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ManifestError(f"{path}: files[{i}] needs at least a 'name'")
        item = ManifestFile(**{k: v for k, v in entry.items() if k in allowed})
        if not item.url and not item.bundled:
            raise ManifestError(f"{path}: files[{i}] ({item.name}) has neither 'url' nor 'bundled'")
        if item.unpack not in (None, "gunzip"):
            raise ManifestError(f"{path}: files[{i}] unpack must be 'gunzip' or absent; got {item.unpack!r}")
        files.append(item)
    return Manifest(str(raw.get("name", path.stem)), path, files, raw)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, item: ManifestFile, shown_name: str) -> str:
    size = path.stat().st_size
    if item.size is not None and size != item.size:
        raise ChecksumError(f"{shown_name}: size {size} bytes, manifest says {item.size}")
    digest = sha256_of(path)
    if item.sha256 and digest != item.sha256.lower():
        raise ChecksumError(f"{shown_name}: sha256 {digest} does not match the manifest's {item.sha256}")
    return digest


def _download(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Stream `url` into `part`, resuming from its current size when the server honours Range."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # range past the end: the part file is already complete
            return
        raise OSError(f"{url}: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise OSError(f"{url}: {err.reason}") from err
    with response:
        resumed = have and getattr(response, "status", 200) == 206
        mode = "ab" if resumed else "wb"
        total = response.headers.get("Content-Length")
        total = int(total) + (have if resumed else 0) if total else None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(
                total=total,
                initial=have if resumed else 0,
                unit="B",
                unit_scale=True,
                desc=part.name[:-5],
                file=sys.stderr,
            )
        with open(part, mode) as out:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                if bar:
                    bar.update(len(chunk))
        if bar:
            bar.close()


def _gunzip(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".part")
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)
    except (OSError, EOFError) as err:
        tmp.unlink(missing_ok=True)
        raise ChecksumError(f"{src}: cannot gunzip: {err}") from err
    os.replace(tmp, dest)


def fetch(
    name: str,
    dest: str | os.PathLike | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    directory: Path | None = None,
) -> dict:
    """Download (or, for bundled files, locate) every file of manifest `name` and verify it.

    Returns {"name", "dir", "files": [{"name", "path", "sha256", "verified", "downloaded"}]};
    "verified" is False where the manifest has no sha256 (the computed one is reported).
    """
    manifest = load_manifest(name, directory)
    dest_dir = Path(dest) if dest else default_data_dir(manifest.name)
    results = []
    for item in manifest.files:
        downloaded = False
        if item.bundled:
            target = PACKAGE_DIR / item.bundled
            if not target.is_file():
                raise ManifestError(f"{manifest.path}: bundled file {target} is missing from the package")
            digest = _verify(target, item, str(target))
        else:
            dest_dir.mkdir(parents=True, exist_ok=True)
            target = dest_dir / item.name
            if target.is_file():
                digest = _verify(target, item, str(target))
            else:
                part = dest_dir / f"{item.name}.part"
                _download(item.url, part, timeout, progress)
                try:
                    digest = _verify(part, item, f"{item.url} (saved as {part})")
                except ChecksumError:
                    part.unlink(missing_ok=True)  # a corrupt partial file must not be resumed
                    raise
                os.replace(part, target)
                downloaded = True
            if item.unpack == "gunzip" and not (dest_dir / item.final_name).is_file():
                _gunzip(target, dest_dir / item.final_name)
        path = target.parent / item.final_name if item.unpack else target
        results.append(
            {
                "name": item.name,
                "path": str(path),
                "sha256": digest,
                "verified": bool(item.sha256),
                "downloaded": downloaded,
            }
        )
    out = {"name": manifest.name, "dir": str(dest_dir), "files": results}
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
