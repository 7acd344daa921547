"""`mamba-audio fetch` against a local HTTP server (127.0.0.1, a thread; never the network): an
SC09-like tar.gz and a zip unpacked, checksum mismatch, unknown names, unsafe archives."""

import hashlib
import io
import json
import tarfile

import pytest
import yaml

from core.data import archive
from core.data.errors import ArchiveError
from mamba_audio.cli import main
from mamba_audio.manifests import audio_manifests, load_manifest
from mamba_audio.sc09 import DIGITS, list_splits
from tests.audio.sc09_layout import write_speech_commands
from tests.http_server import zip_bytes

LISTS = ["validation_list.txt", "testing_list.txt"]


def _tar_gz(folder) -> bytes:
    """The folder as Speech Commands packs it: members named "./word/file.wav"."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname="./" + path.relative_to(folder).as_posix(), recursive=False)
    return buffer.getvalue()


def _manifests(tmp_path, monkeypatch, entry, **fields):
    folder = tmp_path / "manifests"
    folder.mkdir(exist_ok=True)
    (folder / "toy.yaml").write_text(yaml.safe_dump({"name": "toy", "domain": "audio", **fields, "files": [entry]}))
    (folder / "genome.yaml").write_text(yaml.safe_dump({"name": "genome", "files": [entry]}))  # not audio
    monkeypatch.setenv("MAMBA_DATA_MANIFESTS", str(folder))
    return folder


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def sc09_archive(server, tmp_path, monkeypatch):  # noqa: F811
    root, url, requests = server
    data = _tar_gz(write_speech_commands(tmp_path / "staging"))
    (root / "speech.tar.gz").write_bytes(data)
    entry = {
        "name": "speech.tar.gz",
        "url": f"{url}/speech.tar.gz",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "unpack": "untar",
        "into": "sc09",
        "extract": [f"{d}/" for d in DIGITS] + LISTS,
        "role": "audio",
    }
    return entry, requests


def test_fetch_sc09_like_tar_keeps_digits_and_lists(sc09_archive, tmp_path, monkeypatch, capsys):
    entry, _ = sc09_archive
    _manifests(tmp_path, monkeypatch, entry, sample_rate_hz=16000, quantization="mulaw", mode="clips")
    dest = tmp_path / "data"
    code, out, err = _run(capsys, ["fetch", "toy", "--dest", str(dest)])
    assert code == 0 and len(out.strip().splitlines()) == 1
    result = json.loads(out)
    assert result["command"] == "fetch" and result["sha256_verified"] and result["files"][0]["size_verified"]
    assert result["data"] == str(dest / "sc09") and result["sample_rate_hz"] == 16000
    assert sorted(p.name for p in (dest / "sc09").iterdir()) == [
        "one",
        "testing_list.txt",
        "two",
        "validation_list.txt",
        "zero",
    ]
    assert not list(dest.rglob("*.part")) and (dest / "speech.tar.gz").is_file()
    assert "speech.tar.gz" in err  # the progress bar (stderr)
    parts = list_splits(result["data"])
    assert [len(parts[s]) for s in ("train", "valid", "test")] == [12, 2, 1]


def test_fetch_again_reuses_the_archive_and_redoes_an_interrupted_extraction(
    sc09_archive, tmp_path, monkeypatch, capsys
):
    entry, requests = sc09_archive
    _manifests(tmp_path, monkeypatch, entry)
    dest = tmp_path / "data"
    assert main(["fetch", "toy", "--dest", str(dest)]) == 0
    import shutil

    shutil.move(dest / "sc09", dest / "sc09.part")  # as if killed half-way through unpacking
    (dest / "sc09.part" / "zero" / "a_nohash_0.wav").unlink()
    code, out, _ = _run(capsys, ["fetch", "toy", "--dest", str(dest)])
    assert code == 0 and len(requests) == 1  # verified archive reused, not downloaded again
    assert (dest / "sc09" / "zero" / "a_nohash_0.wav").is_file() and not (dest / "sc09.part").exists()
    assert not json.loads(out.strip().splitlines()[-1])["files"][0]["downloaded"]


def test_sha256_mismatch_exits_2_and_leaves_nothing(sc09_archive, tmp_path, monkeypatch, capsys):
    entry, _ = sc09_archive
    _manifests(tmp_path, monkeypatch, {**entry, "sha256": "0" * 64})
    dest = tmp_path / "data"
    code, out, err = _run(capsys, ["fetch", "toy", "--dest", str(dest)])
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert lines[-1].startswith("mamba-audio fetch: error:") and "does not match the manifest" in lines[-1]
    assert "speech.tar.gz" in lines[-1]
    assert not dest.exists()  # created by this run, left empty: removed


def test_null_checksum_is_reported_unverified_and_zip_top_folder_is_the_data(server, tmp_path, monkeypatch, capsys):  # noqa: F811
    root, url, _ = server
    data = zip_bytes({"piano/a.wav": b"RIFFa", "piano/b.wav": b"RIFFb"})
    (root / "piano.zip").write_bytes(data)
    entry = {"name": "piano.zip", "url": f"{url}/piano.zip", "size": None, "sha256": None, "unpack": "unzip"}
    _manifests(tmp_path, monkeypatch, entry, quantization="linear")
    code, out, _ = _run(capsys, ["fetch", "toy", "--dest", str(tmp_path / "d")])
    result = json.loads(out)
    assert code == 0 and result["sha256_verified"] is False and result["quantization"] == "linear"
    assert result["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()  # reported so it can be pinned
    assert result["data"] == str(tmp_path / "d" / "piano" / "piano")
    assert (tmp_path / "d" / "piano" / "piano" / "b.wav").read_bytes() == b"RIFFb"


def test_unknown_or_non_audio_name_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    _manifests(tmp_path, monkeypatch, {"name": "x.wav", "url": "https://example.org/x.wav"})
    code, out, err = _run(capsys, ["fetch", "nope", "--dest", str(tmp_path / "d")])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no data manifest named 'nope'" in err and "known: toy)" in err  # genome is not listed
    code, _, err = _run(capsys, ["fetch", "genome", "--dest", str(tmp_path / "d")])
    assert code == 2 and "not an audio data set" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def _tar_with(tmp_path, add) -> object:
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        add(tar)
    return path


def test_unsafe_tar_members_are_refused_and_nothing_is_left(tmp_path):
    def traversal(tar):
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))

    def link(tar):
        info = tarfile.TarInfo("zero/link.wav")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)

    for add, message in ((traversal, "outside the folder"), (link, "is a link")):
        dest = tmp_path / "out"
        with pytest.raises(ArchiveError, match=message):
            archive.untar(_tar_with(tmp_path, add), dest)
        assert not dest.exists() and not (tmp_path / "out.part").exists() and not (tmp_path / "escaped.txt").exists()


def test_shipped_audio_manifests():
    assert audio_manifests() == ["beethoven", "sc09", "youtubemix"]
    sc09 = load_manifest("sc09")
    (item,) = sc09.files
    assert item.unpack == "untar" and item.final_name == "sc09" and set(LISTS) <= set(item.extract)
    assert item.sha256 and item.size  # published for the official v0.02 archive
    assert load_manifest("beethoven").raw["quantization"] == "linear"
    assert load_manifest("youtubemix").raw["splits"]["fractions"] == {"train": 0.88, "valid": 0.06, "test": 0.06}
