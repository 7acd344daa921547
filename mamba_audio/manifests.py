"""Audio data manifests: the data_manifests/*.yaml with `domain: audio`, fetched with `core.data`.

    data_manifests/NAME.yaml -> load_manifest -> Manifest -> fetch -> {"data": folder for --data, ...}

Reading, resumable download, sha256/size checks and safe unpacking are `core.data`'s; this module
picks the audio data sets (sc09, youtubemix, beethoven), checks their audio fields
(`sample_rate_hz`, `quantization`, `mode`) and puts downloads under $MAMBA_AUDIO_DATA/NAME, else
~/.cache/mamba_audio/data/NAME.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.data import default_data_dir as _default_data_dir
from core.data import fetch_manifest
from core.data import load_manifest as _load_core_manifest
from core.data.errors import ManifestError, ManifestNotFoundError
from core.data.manifest import Manifest, available_manifests, manifest_dir, manifest_path, read_yaml

from .datasets import MODES
from .quantize import QUANTIZERS

DOMAIN = "audio"


def default_data_dir(name: str) -> Path:
    """$MAMBA_AUDIO_DATA/NAME, else ~/.cache/mamba_audio/data/NAME."""
    return _default_data_dir(name, "MAMBA_AUDIO_DATA", "mamba_audio")


def audio_manifests(directory: Path | None = None) -> list[str]:
    """Names of the manifests marked `domain: audio` (unreadable ones are left out here)."""
    directory = directory or manifest_dir()
    names = []
    for name in available_manifests(directory):
        try:
            raw = read_yaml(directory / f"{name}.yaml")
        except ManifestError:
            continue
        if isinstance(raw, dict) and raw.get("domain") == DOMAIN:
            names.append(name)
    return names


def _check_audio_fields(manifest: Manifest) -> None:
    raw = manifest.raw
    rate = raw.get("sample_rate_hz")
    if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0):
        raise ManifestError(f"{manifest.path}: 'sample_rate_hz' must be a positive integer; got {rate!r}")
    if raw.get("quantization", "mulaw") not in QUANTIZERS:
        raise ManifestError(
            f"{manifest.path}: 'quantization' must be one of {', '.join(QUANTIZERS)}; got {raw['quantization']!r}"
        )
    if raw.get("mode", MODES[0]) not in MODES:
        raise ManifestError(f"{manifest.path}: 'mode' must be one of {', '.join(MODES)}; got {raw['mode']!r}")


def load_manifest(name_or_path: str | os.PathLike, directory: Path | None = None) -> Manifest:
    """An audio manifest by NAME (or path to its YAML); ManifestNotFoundError lists the audio ones."""
    path = manifest_path(name_or_path, directory, known=audio_manifests(directory))
    manifest = _load_core_manifest(path)
    if manifest.raw.get("domain") != DOMAIN:
        known = ", ".join(audio_manifests(directory)) or "none"
        raise ManifestNotFoundError(f"{path} is not an audio data set (no 'domain: audio'; audio ones: {known})")
    _check_audio_fields(manifest)
    return manifest


def _data_root(path: Path) -> Path:
    """Descend through folders that hold nothing but one folder (archives often wrap a top folder)."""
    while path.is_dir():
        entries = list(path.iterdir())
        if len(entries) != 1 or not entries[0].is_dir():
            break
        path = entries[0]
    return path


def fetch(
    name: str,
    dest: str | os.PathLike | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    directory: Path | None = None,
) -> dict:
    """Download, verify and unpack audio data set `name`; `core.data.fetch_manifest`'s dict plus
    "data" (the folder to pass to `mamba-audio pretrain --data`), "sample_rate_hz",
    "quantization" and "mode" from the manifest."""
    manifest = load_manifest(name, directory)
    dest_dir = Path(dest) if dest else default_data_dir(manifest.name)
    result = fetch_manifest(manifest, dest_dir, timeout=timeout, progress=progress)
    audio = [f for item, f in zip(manifest.files, result["files"]) if item.role == DOMAIN] or result["files"]
    result.update(
        data=str(_data_root(Path(audio[0]["path"]))),
        sample_rate_hz=manifest.raw.get("sample_rate_hz"),
        quantization=manifest.raw.get("quantization", "mulaw"),
        mode=manifest.raw.get("mode", MODES[0]),
    )
    return result
