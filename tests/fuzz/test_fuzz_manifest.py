"""Fuzzed data manifests: `load_manifest` ends in ManifestError or returns file entries whose
fields are safe to turn into paths, URLs and checksums; never a raw yaml/TypeError, a
RecursionError, or a file name that escapes the download folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mamba_bio.errors import ManifestError
from mamba_bio.manifests import load_manifest
from tests.fuzz.fuzz_settings import AWKWARD_TEXT, FUZZ, mutated, no_hang, written

VALID_MANIFEST = b"""name: tiny
licence: CC0
files:
  - {name: genome.fa.gz, url: "https://example.org/genome.fa.gz", size: 12, sha256: null, unpack: gunzip, role: fasta}
  - {name: regions.bed, bundled: sample_data/regions.bed, role: bed}
splits: {train: [chr1], test: [chr2]}
species: {ape: {file: genome.fa}}
"""

SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.sampled_from(["genome.fa", "../../etc/passwd", "/abs/path", "https://x.org/a", "ftp://h/f", "gunzip", "unzip"]),
    st.sampled_from(["a" * 64, "A" * 64, "g" * 64, "", ".", "..", "dir/file", "name\x00"]),
    st.text(max_size=8),
)
FILE_ENTRY = st.dictionaries(
    st.sampled_from(["name", "url", "size", "sha256", "unpack", "bundled", "role", "other"]), SCALAR, max_size=6
)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
DOCUMENT = st.fixed_dictionaries(
    {},
    optional={
        "name": SCALAR,
        "files": st.one_of(st.lists(st.one_of(FILE_ENTRY, VALUE), max_size=3), VALUE),
        "species": st.one_of(
            st.dictionaries(st.text(max_size=4), st.one_of(st.fixed_dictionaries({"file": SCALAR}), VALUE), max_size=2),
            VALUE,
        ),
        "splits": st.one_of(
            st.dictionaries(st.sampled_from(["train", "test"]), st.lists(SCALAR, max_size=2), max_size=2), VALUE
        ),
    },
)
YAML_LINE = st.one_of(
    st.sampled_from(
        ["files:", "  - name: a", "    url: https://x", "name: [", "date: 2020-02-30", "t: 2021-13-01 25:61:00"]
    ),
    st.sampled_from(
        ["&a [*a]", "!!python/object:os.system x", "? [a]: b", "key: !!binary zzz", "%YAML 9.9", "---", "..."]
    ),
    st.text(max_size=12),
    AWKWARD_TEXT,
)
ANY_MANIFEST = st.one_of(
    DOCUMENT.map(lambda doc: yaml.safe_dump(doc, allow_unicode=True).encode("utf-8")),
    st.lists(YAML_LINE, max_size=8).map(lambda lines: "\n".join(lines).encode("utf-8")),
    mutated(VALID_MANIFEST),
    st.integers(1, 1200).map(lambda depth: b"files: " + b"[" * depth),
    st.binary(max_size=32),
)


@FUZZ
@given(data=ANY_MANIFEST)
def test_malformed_manifest_gives_project_error(data):
    with written("tiny.yaml", data) as path, no_hang():
        try:
            manifest = load_manifest(path)
        except ManifestError as err:
            assert str(path) in str(err)
            return
        assert isinstance(manifest.name, str) and Path(manifest.name).name == manifest.name
        for item in manifest.files:
            assert isinstance(item.name, str) and Path(item.name).name == item.name and item.name not in (".", "..")
            assert isinstance(item.url, str) or isinstance(item.bundled, str)
            assert item.size is None or (isinstance(item.size, int) and item.size >= 0)
            assert item.unpack in (None, "gunzip")


def test_valid_manifest_still_reads(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_bytes(VALID_MANIFEST)
    manifest = load_manifest(path)
    assert manifest.name == "tiny"
    assert [(f.name, f.final_name, f.role) for f in manifest.files] == [
        ("genome.fa.gz", "genome.fa", "fasta"),
        ("regions.bed", "regions.bed", "bed"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "files:\n  - {name: ../../outside, url: 'https://x.org/a'}\n",  # path traversal out of the data folder
        "files:\n  - {name: a, url: 'https://x.org/a', size: '12'}\n",  # size as a string
        "files:\n  - {name: a, url: 'https://x.org/a', sha256: 12}\n",
        "files:\n  - {name: a, url: 'file:///etc/passwd'}\n",
        "files:\n  - {name: [a], url: 'https://x.org/a'}\n",
        "released: 2020-02-30\nfiles: []\n",  # PyYAML's timestamp constructor raises a bare ValueError
        "files: " + "[" * 1200,  # nesting deep enough to exhaust the recursion limit
        "files: []\nspecies: {ape: genome.fa}\n",
    ],
)
def test_known_malformed_manifests(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError, match="bad.yaml"):
        load_manifest(path)
