"""Unpacking downloaded archives safely and atomically: gunzip, unzip, untar.

Each function writes into `<dest>.part` and renames it to `dest` only when everything is out, so
`dest` existing means complete; a failed or interrupted run leaves no `dest` and the next run
starts the extraction again from the (already verified) archive.

Zip and tar members are checked before anything is written: absolute paths, `..`, links and
device files are refused (an archive must not write outside its folder or point into the system).
`members` keeps only some of the archive: an entry "dir/" keeps that folder, any other entry that
exact file (member names are compared without a leading "./").
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from .download import CHUNK_BYTES
from .errors import ArchiveError


def _normalise(member: str) -> str:
    return member[2:] if member.startswith("./") else member


def wanted(member: str, members: Sequence[str] | None) -> bool:
    """Whether archive `member` is kept by the `members` filter (None keeps everything)."""
    if members is None:
        return True
    name = _normalise(member)
    return any(name.startswith(m) if m.endswith("/") else name == m for m in members)


def _safe_target(root: Path, member: str, archive: Path) -> Path:
    """Where `member` lands under `root`; ArchiveError if it would land anywhere else."""
    path = PurePosixPath(_normalise(member))
    if path.is_absolute() or ".." in path.parts or "\\" in member:
        raise ArchiveError(f"{archive}: archive member {member!r} points outside the folder; not extracted")
    target = root.joinpath(*path.parts)
    if not target.resolve().is_relative_to(root.resolve()):
        raise ArchiveError(f"{archive}: archive member {member!r} points outside the folder; not extracted")
    return target


def gunzip(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".part")
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, CHUNK_BYTES)
    except (OSError, EOFError) as err:
        tmp.unlink(missing_ok=True)
        raise ArchiveError(f"{src}: cannot gunzip: {err}") from err
    os.replace(tmp, dest)


def _into_part_folder(src: Path, dest: Path, write) -> None:
    """Run `write(tmp_folder)`, then rename the folder to `dest`; remove it on any error."""
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an interrupted run
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if not any(tmp.iterdir()):
            raise ArchiveError(f"{src}: no archive member matched; nothing extracted")
    except ArchiveError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArchiveError(f"{src}: cannot unpack: {err}") from err
    except BaseException:  # Ctrl-C: no half-extracted folder either
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, dest)


def unzip(src: Path, dest: Path, members: Sequence[str] | None = None) -> None:
    """Extract a zip into the new folder `dest`, refusing members that would land outside it."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(src) as archive:
            infos = [info for info in archive.infolist() if wanted(info.filename, members)]
            targets = [_safe_target(tmp, info.filename, src) for info in infos]  # check all first
            for info, target in zip(infos, targets):
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as fin, open(target, "wb") as fout:
                    shutil.copyfileobj(fin, fout, CHUNK_BYTES)

    _into_part_folder(src, dest, write)


def untar(src: Path, dest: Path, members: Sequence[str] | None = None) -> None:
    """Extract a (compressed) tar into the new folder `dest`: regular files and folders only.

    Streams the archive once (a .tar.gz cannot seek), so members are checked as they come; any
    refused member removes everything extracted so far.
    """

    def write(tmp: Path) -> None:
        with tarfile.open(src, mode="r:*") as archive:
            for info in archive:
                if not wanted(info.name, members):
                    continue
                target = _safe_target(tmp, info.name, src)
                if info.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif info.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.extractfile(info) as fin, open(target, "wb") as fout:
                        shutil.copyfileobj(fin, fout, CHUNK_BYTES)
                else:
                    kind = "link" if info.issym() or info.islnk() else "special file"
                    raise ArchiveError(f"{src}: archive member {info.name!r} is a {kind}; not extracted")

    _into_part_folder(src, dest, write)


UNPACKERS = {"unzip": unzip, "untar": untar}
