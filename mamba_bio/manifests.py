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
import zipfile
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
    unpack: str | None = None  # "gunzip": also write the decompressed file; "unzip": extract into a folder
    bundled: str | None = None  # path inside the mamba_bio package, for files shipped with it
    role: str | None = None  # fasta, bed, ... (informational)

    @property
    def final_name(self) -> str:
        if self.unpack == "gunzip" and self.name.endswith(".gz"):
            return self.name[:-3]
        if self.unpack == "unzip" and self.name.endswith(".zip"):
            return self.name[:-4]  # the folder the archive is extracted into
        return self.name


@dataclass
class Manifest:
    name: str
    path: Path
    files: list[ManifestFile] = field(default_factory=list)
    raw: dict = field(default_factory=dict)


# what each ManifestFile field may hold (None is always allowed: the field is absent or null)
_FILE_FIELDS = {"name": str, "url": str, "size": int, "sha256": str, "unpack": str, "bundled": str, "role": str}
_URL_SCHEMES = ("https://", "http://", "ftp://")
_HEX = set("0123456789abcdefABCDEF")


def _is_plain_name(name) -> bool:
    """A file or folder name that stays inside the download folder it is joined to."""
    return (
        isinstance(name, str)
        and name.strip() == name
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


def _check_file_entry(item: ManifestFile, where: str) -> None:
    """ManifestError for a files[] entry whose fields have the wrong type or form: these values
    become paths, URLs and checksums, and a bad one must stop `load_manifest`, not a download."""
    for key, kind in _FILE_FIELDS.items():
        value = getattr(item, key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ManifestError(f"{where}: {key!r} must be a {kind.__name__}; got {value!r}")
    if not _is_plain_name(item.name):
        raise ManifestError(f"{where}: 'name' must be a plain file name (no '/' or '..'); got {item.name!r}")
    if not item.url and not item.bundled:
        raise ManifestError(f"{where} ({item.name}) has neither 'url' nor 'bundled'")
    if item.url and not item.url.startswith(_URL_SCHEMES):
        raise ManifestError(f"{where}: 'url' must start with {', '.join(_URL_SCHEMES)}; got {item.url!r}")
    if item.size is not None and item.size < 0:
        raise ManifestError(f"{where}: 'size' must be a number of bytes >= 0; got {item.size}")
    if item.sha256 is not None and (len(item.sha256) != 64 or not set(item.sha256) <= _HEX):
        raise ManifestError(f"{where}: 'sha256' must be 64 hex digits or null; got {item.sha256!r}")
    if item.unpack not in (None, "gunzip", "unzip"):
        raise ManifestError(f"{where}: unpack must be 'gunzip', 'unzip' or absent; got {item.unpack!r}")
    if item.bundled is not None and (Path(item.bundled).is_absolute() or ".." in Path(item.bundled).parts):
        raise ManifestError(f"{where}: 'bundled' must be a path inside the package; got {item.bundled!r}")


def _check_species_sections(raw: dict, path: Path) -> None:
    """`species` (name -> {file: NAME}) and `splits` (split -> [record, ...]) as `write_species_table` reads them."""
    if "species" not in raw:
        return
    species, splits = raw["species"], raw.get("splits") or {}
    if not isinstance(species, dict) or not all(
        isinstance(info, dict) and _is_plain_name(info.get("file")) for info in species.values()
    ):
        raise ManifestError(f"{path}: 'species' must map each species to {{file: NAME}}")
    if not isinstance(splits, dict) or not all(
        isinstance(records, list) and all(isinstance(r, str) for r in records) for records in splits.values()
    ):
        raise ManifestError(f"{path}: 'splits' must map each split to a list of record names")


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
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML: {err}") from err
    except ValueError as err:  # PyYAML's timestamp constructor lets datetime's errors out (e.g. 2020-02-30)
        raise ManifestError(f"{path}: not valid YAML: {err}") from err
    except RecursionError as err:  # PyYAML's composer recurses once per nesting level
        raise ManifestError(f"{path}: not valid YAML: nested too deeply") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("files"), list):
        raise ManifestError(f"{path}: expected a mapping with a 'files' list")
    name = raw.get("name", path.stem)
    if not _is_plain_name(name):
        raise ManifestError(f"{path}: 'name' must be a plain folder name (no '/' or '..'); got {name!r}")
    files = []
    for i, entry in enumerate(raw["files"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ManifestError(f"{path}: files[{i}] needs at least a 'name'")
        item = ManifestFile(**{k: v for k, v in entry.items() if k in _FILE_FIELDS})
        _check_file_entry(item, f"{path}: files[{i}]")
        files.append(item)
    _check_species_sections(raw, path)
    return Manifest(name, path, files, raw)


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


def _unzip(src: Path, dest: Path) -> None:
    """Extract a zip into `dest` (a new folder), refusing members that would land outside it."""
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(src) as archive:
            for member in archive.namelist():
                if not (tmp / member).resolve().is_relative_to(tmp.resolve()):
                    raise ChecksumError(f"{src}: archive member {member!r} points outside the folder; not extracted")
            archive.extractall(tmp)
    except (OSError, zipfile.BadZipFile) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ChecksumError(f"{src}: cannot unzip: {err}") from err
    except ChecksumError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
            if item.unpack == "unzip" and not (dest_dir / item.final_name).is_dir():
                _unzip(target, dest_dir / item.final_name)
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
