"""`mamba-audio pretrain --pack` end to end on the bundled clips; --pack with LTI stages is bad input."""

import json

from mamba_audio.cli import main

TINY = ["--d-model", "8", "--n-layer", "1", "--d-state", "4", "--length", "1024", "--batch-size", "2"]
TINY += ["--device", "cpu", "--max-steps", "2"]


def test_pretrain_pack_on_bundled_clips(tmp_path, capsys):
    assert main(["pretrain", "--pack", "--out", str(tmp_path / "run"), *TINY]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 2 and 0 < result["valid_bpb"] < 9
    # clips of 0.5-3 s: packing wastes a little alignment and one row end, tiling pads every clip
    assert 0 <= result["padding_fraction"] < 0.02 < result["padding_fraction_unpacked"]
    assert result["train_rows"] > 0


def test_pack_with_lti_stages_is_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["pretrain", "--pack", "--stage-blocks", "lti,mamba,mamba", "--out", str(out), *TINY])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pack" in err[0] and "lti" in err[0]
    assert not out.exists()
