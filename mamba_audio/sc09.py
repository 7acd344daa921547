"""SC09 folders (the spoken digits of Speech Commands) split by the official validation/test lists.

    DIR/zero/*.wav ... DIR/nine/*.wav + DIR/validation_list.txt + DIR/testing_list.txt
        -> list_splits -> {"train": [...], "valid": [...], "test": [...]}

Speech Commands v0.02 (Warden 2018, arXiv:1804.03209) ships `validation_list.txt` and
`testing_list.txt`, one clip per line as a path relative to the archive root
("zero/0a2b400e_nohash_0.wav"), covering all 35 words. SC09 (Donahue et al. 2019; SaShiMi) keeps
the ten digit words: a digit clip in validation_list is valid, in testing_list test, and every
other digit clip train. Entries for other words are ignored, as are other folders of DIR.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from .errors import AudioDatasetError, AudioFileNotFoundError
from .io import AUDIO_EXTENSIONS

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLIT_LISTS = {"valid": "validation_list.txt", "test": "testing_list.txt"}


def has_split_lists(data_dir: str | os.PathLike) -> bool:
    """Whether `data_dir` holds both official list files (then `list_splits` applies)."""
    return all((Path(data_dir) / name).is_file() for name in SPLIT_LISTS.values())


def read_split_list(path: Path) -> set[str]:
    """The digit entries ("word/file.wav") of one list file; AudioDatasetError naming file and line."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise AudioDatasetError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    entries = set()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry:
            continue
        parts = PurePosixPath(entry).parts
        if len(parts) != 2 or entry.startswith("/") or ".." in parts or "\\" in entry:
            raise AudioDatasetError(f"{path}:{number}: expected 'word/file.wav', got {entry!r}")
        if parts[0] in DIGITS:
            entries.add(entry)
    return entries


def digit_clips(data_dir: str | os.PathLike) -> dict[str, Path]:
    """Every audio file directly inside DIR/zero ... DIR/nine, keyed by its list-style path "word/file"."""
    root = Path(data_dir)
    clips = {}
    for word in DIGITS:
        folder = root / word
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
                    clips[f"{word}/{path.name}"] = path
    if not clips:
        raise AudioFileNotFoundError(f"no audio files in the digit folders {DIGITS[0]}/ ... {DIGITS[-1]}/ of {root}")
    return clips


def list_splits(data_dir: str | os.PathLike) -> dict[str, list[Path]]:
    """Digit clips of `data_dir` split by its validation_list.txt / testing_list.txt (see the module docstring).

    A listed digit clip missing from the folder, or a clip in both lists, is an AudioDatasetError:
    the folder is then not the archive the lists describe (e.g. an interrupted extraction).
    """
    root = Path(data_dir)
    clips = digit_clips(root)
    listed = {split: read_split_list(root / name) for split, name in SPLIT_LISTS.items()}
    both = listed["valid"] & listed["test"]
    if both:
        raise AudioDatasetError(
            f"{root}: {len(both)} clips are in both {SPLIT_LISTS['valid']} and {SPLIT_LISTS['test']}, "
            f"e.g. {sorted(both)[0]}"
        )
    for split, entries in listed.items():
        missing = sorted(entries - clips.keys())
        if missing:
            raise AudioDatasetError(
                f"{root / SPLIT_LISTS[split]} lists {len(missing)} digit clips missing from {root}, e.g. {missing[0]}; "
                "re-extract the data set (mamba-audio fetch sc09)"
            )
    held_out = listed["valid"] | listed["test"]
    return {
        "train": [clips[key] for key in sorted(clips.keys() - held_out)],
        "valid": [clips[key] for key in sorted(listed["valid"])],
        "test": [clips[key] for key in sorted(listed["test"])],
    }
