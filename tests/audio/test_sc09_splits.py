"""SC09 folders split by Speech Commands' validation_list.txt / testing_list.txt: only digits, lists
picked up automatically by folder_splits, `pretrain` and `bpb --split`; bad lists name file and line."""

import json

import pytest

from mamba_audio.cli import main
from mamba_audio.datasets import folder_splits, split_method
from mamba_audio.errors import AudioDatasetError, AudioFileNotFoundError
from mamba_audio.sc09 import has_split_lists, list_splits
from tests.audio.sc09_layout import write_speech_commands


@pytest.fixture
def sc09(tmp_path):
    return write_speech_commands(tmp_path / "sc")


def _rel(paths, root):
    return sorted(p.relative_to(root).as_posix() for p in paths)


def test_lists_split_the_digit_clips_and_the_rest_is_train(sc09):
    parts = list_splits(sc09)
    assert _rel(parts["valid"], sc09) == ["one/b_nohash_0.wav", "zero/a_nohash_0.wav"]
    assert _rel(parts["test"], sc09) == ["two/a_nohash_1.wav"]
    train = _rel(parts["train"], sc09)
    assert len(train) == 3 * 5 - 3  # three digit words of five clips, minus the held-out ones
    assert all(p.split("/")[0] in ("zero", "one", "two") for p in train)  # no "yes", no background noise
    assert not set(train) & {"one/b_nohash_0.wav", "zero/a_nohash_0.wav", "two/a_nohash_1.wav"}


def test_folder_splits_uses_the_lists_when_present(sc09):
    assert has_split_lists(sc09) and split_method(sc09) == "lists"
    splits = folder_splits(sc09, 16000, 512, fractions=(0.5, 0.25, 0.25), seed=7)  # fractions ignored
    assert [len(splits[s].files) for s in ("train", "valid", "test")] == [12, 2, 1]
    (sc09 / "testing_list.txt").unlink()
    assert split_method(sc09) == "fractions"  # one list alone is not the Speech Commands layout


@pytest.mark.parametrize(
    "line,message",
    [
        ("/abs/zero/x.wav", "expected 'word/file.wav'"),
        ("../zero/x.wav", "expected 'word/file.wav'"),
        ("zero.wav", "expected 'word/file.wav'"),
    ],
)
def test_malformed_list_line_names_file_and_line(sc09, line, message):
    (sc09 / "testing_list.txt").write_text("two/a_nohash_1.wav\n" + line + "\n")
    with pytest.raises(AudioDatasetError, match=r"testing_list\.txt:2: " + message):
        list_splits(sc09)


def test_listed_clip_missing_or_in_both_lists(sc09):
    (sc09 / "zero" / "a_nohash_0.wav").unlink()
    with pytest.raises(AudioDatasetError, match=r"validation_list\.txt lists 1 digit clips missing.*zero/a_nohash_0"):
        list_splits(sc09)
    (sc09 / "validation_list.txt").write_text("two/a_nohash_1.wav\n")
    with pytest.raises(AudioDatasetError, match="in both validation_list.txt and testing_list.txt"):
        list_splits(sc09)


def test_folder_without_digit_clips(tmp_path):
    (tmp_path / "validation_list.txt").write_text("")
    (tmp_path / "testing_list.txt").write_text("")
    with pytest.raises(AudioFileNotFoundError, match="digit folders zero/ ... nine/"):
        list_splits(tmp_path)


def test_pretrain_and_bpb_split_by_the_lists(sc09, tmp_path, capsys):
    tiny = ["--d-model", "8", "--n-layer", "1", "--d-state", "4", "--length", "512", "--device", "cpu"]
    out = tmp_path / "run"
    code = main(["pretrain", "--data", str(sc09), "--max-steps", "1", "--batch-size", "4", "--out", str(out), *tiny])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert result["split_method"] == "lists" and (result["train_files"], result["valid_files"]) == (12, 2)
    code = main(["bpb", "--checkpoint", str(out), "--data", str(sc09), "--split", "test", "--device", "cpu"])
    bpb = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and bpb["split_method"] == "lists" and bpb["n_files"] == 1 and bpb["n_samples"] == 512
