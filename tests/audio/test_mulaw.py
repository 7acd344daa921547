"""8-bit mu-law: SaShiMi's formula pinned against hand-computed classes, round trip, silence."""

import torch

from mamba_audio import mulaw


def test_encode_matches_hand_computed_classes():
    # clip min -1, max 1, so s = -1 + 2 (x + 1) / (2 + 1e-6) ~= x; then
    # q = floor(((sign(s) ln(1 + 255 |s|) / ln 256) + 1) / 2 * 255.99 + 0.005):
    #   x = 0.5 : ln(128.5) / ln(256) = 0.875705 -> 0.9378525 * 255.99 + 0.005 = 240.09 -> 240
    #   x = 0.25: ln(64.75) / ln(256) = 0.752102 -> 0.876051 * 255.99 + 0.005 = 224.27 -> 224
    #   x = -0.5: -0.875705 -> 0.0621475 * 255.99 + 0.005 = 15.91 -> 15
    #   x = 0   : s = -5e-7 (the 1e-6 in the scale), e = -2.25e-5 -> 127.997 -> 127
    #   x = 1   : 255.995 -> 255;  x = -1: 0.005 -> 0
    clip = torch.tensor([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0])
    assert mulaw.encode(clip).tolist() == [0, 15, 127, 224, 240, 255]


def test_decode_matches_hand_computed_values():
    # e = q / 128 - 1;  x = sign(e) (256^|e| - 1) / 255
    #   q = 192: e = 0.5 -> (16 - 1) / 255 = 0.0588235;  q = 64: -0.0588235;  q = 128: 0
    #   q = 0: e = -1 -> -1;  q = 255: e = 0.9921875 -> (256 * 2^-0.0625 - 1) / 255 = 0.957437
    out = mulaw.decode(torch.tensor([0, 64, 128, 192, 255]))
    expected = torch.tensor([-1.0, -0.0588235, 0.0, 0.0588235, 0.957437])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_round_trip_error_is_within_one_mu_law_step():
    torch.manual_seed(0)
    x = torch.rand(4, 1000) * 2 - 1
    x[:, 0], x[:, 1] = -1.0, 1.0  # span [-1, 1] so the per-clip scaling is (almost) the identity
    y = mulaw.decode(mulaw.encode(x))
    # one class spans 2/256 of the companded axis; at amplitude a that is ln(256) (1 + 255 a) / 255 * (2 / 256)
    # of waveform, measured at the larger of |x| and |y| (decoding returns a bin edge, not its centre)
    amplitude = torch.maximum(x.abs(), y.abs())
    step = torch.log(torch.tensor(256.0)) * (1 + 255 * amplitude) / 255 * (2 / 256)
    assert ((y - x).abs() <= step + 1e-4).all()
    assert mulaw.encode(x).min() >= 0 and mulaw.encode(x).max() <= 255


def test_scaling_is_per_clip():
    torch.manual_seed(1)
    x = torch.randn(3, 500)
    y = x * torch.tensor([[0.5], [3.0], [100.0]]) + 0.5
    # each row is min-max scaled on its own, so scaling and offsetting a row keeps its classes (up to
    # float rounding at a bin edge); one shared scale would squash rows 0 and 1 into a few classes
    diff = (mulaw.encode(x) - mulaw.encode(y)).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
    shared = mulaw.encode(y.reshape(-1)).reshape(3, 500)
    assert shared[0].unique().numel() < 20 < mulaw.encode(y)[0].unique().numel()


def test_silence_encodes_to_the_silence_class_without_nan():
    q = mulaw.encode(torch.zeros(2, 100))
    assert (q == mulaw.SILENCE_CLASS).all()
    assert torch.isfinite(mulaw.decode(q)).all() and (mulaw.decode(q) == 0).all()
    assert (mulaw.encode(torch.full((50,), 0.3)) == mulaw.SILENCE_CLASS).all()
