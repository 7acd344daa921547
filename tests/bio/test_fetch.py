"""`fetch` against a local HTTP server (127.0.0.1, a thread): never the network."""

import gzip
import hashlib

import pytest
import yaml

from mamba_bio.errors import ChecksumError, ManifestNotFoundError
from mamba_bio.manifests import fetch, load_manifest, sha256_of
from tests.http_server import zip_bytes

PAYLOAD = b">chrT\n" + b"ACGTTGCA" * 4000 + b"\n"


def _manifest(tmp_path, files):
    folder = tmp_path / "manifests"
    folder.mkdir(exist_ok=True)
    (folder / "toy.yaml").write_text(yaml.safe_dump({"name": "toy", "files": files}))
    return folder


def test_download_verifies_sha256_and_renames(server, tmp_path):
    root, url, _ = server
    (root / "toy.fa").write_bytes(PAYLOAD)
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    entry = {"name": "toy.fa", "url": f"{url}/toy.fa", "size": len(PAYLOAD), "sha256": digest}
    manifests = _manifest(tmp_path, [entry])
    result = fetch("toy", tmp_path / "data", progress=False, directory=manifests)
    assert (tmp_path / "data" / "toy.fa").read_bytes() == PAYLOAD
    assert result["files"][0]["verified"] and result["files"][0]["sha256"] == digest
    assert not list((tmp_path / "data").glob("*.part"))


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    root, url, _ = server
    (root / "toy.fa").write_bytes(PAYLOAD)
    manifests = _manifest(tmp_path, [{"name": "toy.fa", "url": f"{url}/toy.fa", "sha256": "0" * 64}])
    with pytest.raises(ChecksumError, match="does not match"):
        fetch("toy", tmp_path / "data", progress=False, directory=manifests)
    assert list((tmp_path / "data").iterdir()) == []


def test_partial_download_is_resumed_with_a_range_request(server, tmp_path):
    root, url, requests = server
    (root / "toy.fa").write_bytes(PAYLOAD)
    data = tmp_path / "data"
    data.mkdir()
    (data / "toy.fa.part").write_bytes(PAYLOAD[:1000])
    manifests = _manifest(
        tmp_path, [{"name": "toy.fa", "url": f"{url}/toy.fa", "sha256": hashlib.sha256(PAYLOAD).hexdigest()}]
    )
    fetch("toy", data, progress=False, directory=manifests)
    assert requests == [("/toy.fa", "bytes=1000-")]
    assert (data / "toy.fa").read_bytes() == PAYLOAD


def test_gunzip_unpack_and_null_checksum_reports_the_computed_one(server, tmp_path):
    root, url, _ = server
    (root / "toy.fa.gz").write_bytes(gzip.compress(PAYLOAD))
    manifests = _manifest(
        tmp_path, [{"name": "toy.fa.gz", "url": f"{url}/toy.fa.gz", "sha256": None, "unpack": "gunzip"}]
    )
    result = fetch("toy", tmp_path / "data", progress=False, directory=manifests)
    assert (tmp_path / "data" / "toy.fa").read_bytes() == PAYLOAD
    entry = result["files"][0]
    assert entry["path"].endswith("toy.fa") and not entry["verified"]
    assert entry["sha256"] == sha256_of(tmp_path / "data" / "toy.fa.gz")


def test_missing_file_on_server(server, tmp_path):
    _, url, _ = server
    manifests = _manifest(tmp_path, [{"name": "x.fa", "url": f"{url}/x.fa"}])
    with pytest.raises(OSError, match="404"):
        fetch("toy", tmp_path / "data", progress=False, directory=manifests)


def test_unknown_manifest_lists_the_known_ones():
    with pytest.raises(ManifestNotFoundError, match="known: .*hg38"):
        load_manifest("no_such_data")


def test_shipped_manifests_parse_and_bundled_samples_verify():
    assert {f.name for f in load_manifest("hg38").files} == {"hg38.ml.fa.gz", "sequences_human.bed"}
    apes = load_manifest("great_apes")
    assert len(apes.files) == 5 and set(apes.raw["species"]) == {
        "human",
        "chimpanzee",
        "bonobo",
        "gorilla",
        "orangutan",
    }
    result = fetch("samples", progress=False)  # bundled: verified against the manifest's sha256, no download
    assert all(f["verified"] and not f["downloaded"] for f in result["files"])
    assert len(result["files"]) == 20


def test_unzip_unpack_extracts_into_a_folder(server, tmp_path):
    root, url, _ = server
    (root / "clips.zip").write_bytes(zip_bytes({"a/one.wav": b"RIFF1", "two.wav": b"RIFF2"}))
    manifests = _manifest(tmp_path, [{"name": "clips.zip", "url": f"{url}/clips.zip", "unpack": "unzip"}])
    result = fetch("toy", tmp_path / "data", progress=False, directory=manifests)
    folder = tmp_path / "data" / "clips"
    assert result["files"][0]["path"] == str(folder)
    assert (folder / "a" / "one.wav").read_bytes() == b"RIFF1" and (folder / "two.wav").read_bytes() == b"RIFF2"


def test_unzip_refuses_members_outside_the_folder(server, tmp_path):
    root, url, _ = server
    (root / "evil.zip").write_bytes(zip_bytes({"../escaped.txt": b"x"}))
    manifests = _manifest(tmp_path, [{"name": "evil.zip", "url": f"{url}/evil.zip", "unpack": "unzip"}])
    with pytest.raises(ValueError, match="outside the folder"):
        fetch("toy", tmp_path / "data", progress=False, directory=manifests)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "data" / "evil").exists()


@pytest.mark.parametrize("name", ["sc09", "youtubemix", "beethoven", "hg38", "great_apes", "samples"])
def test_every_shipped_manifest_loads(name):
    assert load_manifest(name).files
