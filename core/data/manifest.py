"""Data manifests: data_manifests/NAME.yaml -> load_manifest -> Manifest(files=[ManifestFile, ...]).

A manifest lists files with `url`, `size` and `sha256` (null where the provider publishes none),
an optional `unpack` (`gunzip`: also write the decompressed file; `unzip` / `untar`: extract into
a folder, named by `into` or by the archive name without its suffix; `extract`: only these
members, a trailing `/` meaning a whole folder), and free-form sections (`splits`, `licence`,
`source`, ...) that the domain packages read from `Manifest.raw`. Files shipped inside a package
carry `bundled: <path inside that package>` instead of a URL.

Every value that later becomes a path, URL or checksum is checked here, so a bad manifest stops
at `load_manifest` with a ManifestError naming the file, never half-way through a download.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from .errors import ManifestError, ManifestNotFoundError

REPO_MANIFEST_DIR = Path(__file__).resolve().parents[2] / "data_manifests"
UNPACK_METHODS = ("gunzip", "unzip", "untar")
_ARCHIVE_SUFFIXES = {
    "gunzip": (".gz",),
    "unzip": (".zip",),
    "untar": (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar"),
}


def manifest_dir() -> Path:
    """$MAMBA_DATA_MANIFESTS, else the repository's data_manifests/."""
    env = os.environ.get("MAMBA_DATA_MANIFESTS")
    return Path(env) if env else REPO_MANIFEST_DIR


def default_data_dir(name: str, env_var: str, cache_name: str) -> Path:
    """$<env_var>/NAME, else ~/.cache/<cache_name>/data/NAME (each domain package names its own)."""
    root = os.environ.get(env_var)
    return (Path(root) if root else Path.home() / ".cache" / cache_name / "data") / name


@dataclass
class ManifestFile:
    name: str
    url: str | None = None
    size: int | None = None
    sha256: str | None = None
    unpack: str | None = None  # one of UNPACK_METHODS, or None: use the file as downloaded
    into: str | None = None  # folder an archive is extracted into (default: its name without suffix)
    extract: list[str] | None = None  # archive members to keep ("dir/" keeps a folder); None: all
    bundled: str | None = None  # path inside the package that ships the file
    role: str | None = None  # fasta, bed, audio, ... (informational)

    @property
    def final_name(self) -> str:
        """The name of what `fetch` leaves for the user: the file, the gunzipped file or the folder."""
        if self.unpack in ("unzip", "untar") and self.into:
            return self.into
        for suffix in _ARCHIVE_SUFFIXES.get(self.unpack, ()):
            if self.name.endswith(suffix) and len(self.name) > len(suffix):
                return self.name[: -len(suffix)]
        return self.name


@dataclass
class Manifest:
    name: str
    path: Path
    files: list[ManifestFile] = field(default_factory=list)
    raw: dict = field(default_factory=dict)


# what each ManifestFile field may hold (None is always allowed: the field is absent or null)
FILE_FIELDS = {
    "name": str,
    "url": str,
    "size": int,
    "sha256": str,
    "unpack": str,
    "into": str,
    "extract": list,
    "bundled": str,
    "role": str,
}
_URL_SCHEMES = ("https://", "http://", "ftp://")
_HEX = set("0123456789abcdefABCDEF")


def is_plain_name(name) -> bool:
    """A file or folder name that stays inside the download folder it is joined to."""
    return (
        isinstance(name, str)
        and name.strip() == name
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


def _is_member_path(text) -> bool:
    """A relative archive member path such as "zero/" or "validation_list.txt" (no "..", not absolute)."""
    if not isinstance(text, str) or not text or "\\" in text or "\0" in text or text.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in PurePosixPath(text).parts)


def _check_file_entry(item: ManifestFile, where: str) -> None:
    """ManifestError for a files[] entry whose fields have the wrong type or form."""
    for key, kind in FILE_FIELDS.items():
        value = getattr(item, key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ManifestError(f"{where}: {key!r} must be a {kind.__name__}; got {value!r}")
    if not is_plain_name(item.name):
        raise ManifestError(f"{where}: 'name' must be a plain file name (no '/' or '..'); got {item.name!r}")
    if not item.url and not item.bundled:
        raise ManifestError(f"{where} ({item.name}) has neither 'url' nor 'bundled'")
    if item.url and not item.url.startswith(_URL_SCHEMES):
        raise ManifestError(f"{where}: 'url' must start with {', '.join(_URL_SCHEMES)}; got {item.url!r}")
    if item.size is not None and item.size < 0:
        raise ManifestError(f"{where}: 'size' must be a number of bytes >= 0; got {item.size}")
    if item.sha256 is not None and (len(item.sha256) != 64 or not set(item.sha256) <= _HEX):
        raise ManifestError(f"{where}: 'sha256' must be 64 hex digits or null; got {item.sha256!r}")
    if item.unpack is not None and item.unpack not in UNPACK_METHODS:
        methods = ", ".join(UNPACK_METHODS)
        raise ManifestError(f"{where}: unpack must be one of {methods} or absent; got {item.unpack!r}")
    if item.into is not None and not is_plain_name(item.into):
        raise ManifestError(f"{where}: 'into' must be a plain folder name (no '/' or '..'); got {item.into!r}")
    if (item.into is not None or item.extract is not None) and item.unpack not in ("unzip", "untar"):
        raise ManifestError(f"{where}: 'into' and 'extract' need unpack: unzip or untar; got unpack {item.unpack!r}")
    if item.extract is not None and not (item.extract and all(_is_member_path(m) for m in item.extract)):
        raise ManifestError(f"{where}: 'extract' must list relative member paths (no '..'); got {item.extract!r}")
    if item.unpack and not item.bundled and item.final_name == item.name:
        raise ManifestError(f"{where}: cannot tell where to unpack {item.name!r}; add 'into: FOLDER'")
    if item.bundled is not None and (Path(item.bundled).is_absolute() or ".." in Path(item.bundled).parts):
        raise ManifestError(f"{where}: 'bundled' must be a path inside the package; got {item.bundled!r}")


def available_manifests(directory: Path | None = None) -> list[str]:
    directory = directory or manifest_dir()
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def manifest_path(
    name_or_path: str | os.PathLike, directory: Path | None = None, known: list[str] | None = None
) -> Path:
    """The YAML file for `name_or_path`: a path to a .yaml file, or NAME in `directory`.

    `known` narrows the names listed in the ManifestNotFoundError (e.g. only the audio data sets).
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    directory = directory or manifest_dir()
    path = directory / f"{name_or_path}.yaml"
    if not is_plain_name(str(name_or_path)) or not path.is_file():
        names = ", ".join(known if known is not None else available_manifests(directory)) or "none"
        raise ManifestNotFoundError(f"no data manifest named {str(name_or_path)!r} in {directory} (known: {names})")
    return path


def read_yaml(path: Path) -> object:
    """The YAML document in `path`; ManifestError naming the file for anything PyYAML rejects."""
    try:
        return yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML: {err}") from err
    except ValueError as err:  # PyYAML's timestamp constructor lets datetime's errors out (e.g. 2020-02-30)
        raise ManifestError(f"{path}: not valid YAML: {err}") from err
    except RecursionError as err:  # PyYAML's composer recurses once per nesting level
        raise ManifestError(f"{path}: not valid YAML: nested too deeply") from err


def load_manifest(name_or_path: str | os.PathLike, directory: Path | None = None) -> Manifest:
    """Read data_manifests/NAME.yaml (or a path to a YAML file) and check its file entries."""
    path = manifest_path(name_or_path, directory)
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("files"), list):
        raise ManifestError(f"{path}: expected a mapping with a 'files' list")
    name = raw.get("name", path.stem)
    if not is_plain_name(name):
        raise ManifestError(f"{path}: 'name' must be a plain folder name (no '/' or '..'); got {name!r}")
    files = []
    for i, entry in enumerate(raw["files"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ManifestError(f"{path}: files[{i}] needs at least a 'name'")
        item = ManifestFile(**{k: v for k, v in entry.items() if k in FILE_FIELDS})
        _check_file_entry(item, f"{path}: files[{i}]")
        files.append(item)
    return Manifest(name, path, files, raw)
