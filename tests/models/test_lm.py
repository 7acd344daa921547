"""MambaLM: mamba_ssm state_dict layout, recurrent decoding == parallel forward, generation."""

import math

import pytest
import torch
import torch.nn.functional as F

from core.models import MambaConfig, MambaLM
from core.ops import selective_scan_ref


def mamba_ssm_state_dict_shapes(d_model, n_layer, vocab, d_state=16, d_conv=4, expand=2, multiple=8):
    """Key names and shapes of mamba_ssm's MambaLMHeadModel (Mamba-1 layers, rms_norm, tied head)."""
    e, r, v = expand * d_model, math.ceil(d_model / 16), math.ceil(vocab / multiple) * multiple
    shapes = {
        "backbone.embedding.weight": (v, d_model),
        "backbone.norm_f.weight": (d_model,),
        "lm_head.weight": (v, d_model),
    }
    for i in range(n_layer):
        p = f"backbone.layers.{i}."
        shapes.update(
            {
                p + "norm.weight": (d_model,),
                p + "mixer.A_log": (e, d_state),
                p + "mixer.D": (e,),
                p + "mixer.in_proj.weight": (2 * e, d_model),
                p + "mixer.conv1d.weight": (e, 1, d_conv),
                p + "mixer.conv1d.bias": (e,),
                p + "mixer.x_proj.weight": (r + 2 * d_state, e),
                p + "mixer.dt_proj.weight": (e, r),
                p + "mixer.dt_proj.bias": (e,),
                p + "mixer.out_proj.weight": (d_model, e),
            }
        )
    return shapes


def functional_forward(sd, ids, n_layer, d_state=16, eps=1e-5):
    """The LM's maths written straight from a state_dict (mamba_ssm's block order), independent of MambaLM."""
    rms = lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    hidden, residual = sd["backbone.embedding.weight"][ids], None
    for i in range(n_layer):
        p = f"backbone.layers.{i}."
        residual = hidden if residual is None else residual + hidden
        h = rms(residual, sd[p + "norm.weight"])
        x, z = (h @ sd[p + "mixer.in_proj.weight"].T).transpose(1, 2).chunk(2, dim=1)
        w = sd[p + "mixer.conv1d.weight"]
        x = F.silu(
            F.conv1d(x, w, sd[p + "mixer.conv1d.bias"], padding=w.shape[-1] - 1, groups=w.shape[0])[..., : ids.shape[1]]
        )
        r = sd[p + "mixer.dt_proj.weight"].shape[1]
        dt, B, C = (x.transpose(1, 2) @ sd[p + "mixer.x_proj.weight"].T).split([r, d_state, d_state], dim=-1)
        delta = (dt @ sd[p + "mixer.dt_proj.weight"].T).transpose(1, 2)
        y = selective_scan_ref(
            x,
            delta,
            -torch.exp(sd[p + "mixer.A_log"]),
            B.transpose(1, 2),
            C.transpose(1, 2),
            sd[p + "mixer.D"],
            z,
            sd[p + "mixer.dt_proj.bias"],
            delta_softplus=True,
        )
        hidden = y.transpose(1, 2) @ sd[p + "mixer.out_proj.weight"].T
    h = rms(residual + hidden, sd["backbone.norm_f.weight"])
    return h @ sd["lm_head.weight"].T


def test_state_dict_keys_and_shapes_are_mamba_ssm_s():
    model = MambaLM(MambaConfig(d_model=48, n_layer=3, vocab_size=13))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == mamba_ssm_state_dict_shapes(48, 3, 13)


def test_foreign_state_dict_loads_strictly_and_gives_its_logits():
    """A state_dict made outside the model (mamba_ssm's names, random values) loads with strict=True and
    the logits equal an independent functional forward over those same tensors."""
    g = torch.Generator().manual_seed(3)
    sd = {k: 0.2 * torch.randn(s, generator=g) for k, s in mamba_ssm_state_dict_shapes(32, 2, 11).items()}
    for i in range(2):
        sd[f"backbone.layers.{i}.mixer.A_log"] = torch.log(torch.arange(1.0, 17.0)).repeat(64, 1)
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]  # tied, as mamba_ssm saves it
    model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=11))
    model.load_state_dict(sd, strict=True)
    ids = torch.randint(0, 11, (2, 13), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), functional_forward(sd, ids, 2), rtol=1e-4, atol=1e-4)


def test_init_scales_out_proj_and_zeroes_biases_except_dt():
    model = MambaLM(MambaConfig(d_model=64, n_layer=16, vocab_size=8))
    mixer = model.backbone.layers[0].mixer
    bound = 1 / math.sqrt(mixer.d_inner) / math.sqrt(16)  # kaiming_uniform(a=sqrt 5) / sqrt(n_layer)
    assert mixer.out_proj.weight.abs().max() <= bound + 1e-6
    assert mixer.out_proj.weight.abs().max() > 0.5 * bound
    assert mixer.dt_proj.bias.abs().min() > 0  # kept: _no_reinit
    assert abs(model.backbone.embedding.weight.std().item() - 0.02) < 0.005
    assert model.lm_head.weight is model.backbone.embedding.weight


@pytest.mark.parametrize("prompt_len", [1, 3, 9])
def test_prefill_then_step_reproduces_parallel_logits(prompt_len):
    model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=12, d_state=8)).eval()
    ids = torch.randint(0, 12, (3, 14))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(3)
        logits = [model(ids[:, :prompt_len], cache=cache)]
        for t in range(prompt_len, 14):
            logits.append(model.step(ids[:, t], cache)[:, None])
    assert cache.seqlen_offset == 14
    torch.testing.assert_close(torch.cat(logits, dim=1), full, rtol=1e-4, atol=1e-4)


def test_generate_is_reproducible_with_a_seeded_generator():
    model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=10)).eval()
    prompt = torch.randint(0, 10, (2, 4))
    run = lambda seed: model.generate(
        prompt, 12, temperature=1.0, top_k=6, top_p=0.95, generator=torch.Generator().manual_seed(seed)
    )
    a, b, c = run(7), run(7), run(8)
    assert a.shape == (2, 16) and torch.equal(a[:, :4], prompt)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.max() < 10  # the padding rows of the vocabulary are never sampled


def test_greedy_generation_follows_the_parallel_argmax():
    model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=10)).eval()
    out = model.generate(torch.randint(0, 10, (2, 3)), 6, temperature=0)
    with torch.no_grad():
        logits = model(out)[:, 2:-1, :10]
    assert torch.equal(out[:, 3:], logits.argmax(-1))


def test_generate_rejects_an_empty_prompt():
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=5))
    with pytest.raises(ValueError, match="length >= 1"):
        model.generate(torch.zeros(2, 0, dtype=torch.long), 3)


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=9)).eval()
    model.save_pretrained(tmp_path)
    loaded = MambaLM.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    ids = torch.randint(0, 9, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids))
    # a torch-saved state_dict loads without unpickling code
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    model.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))


def test_training_step_under_bf16_autocast_is_finite():
    model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=12))
    ids = torch.randint(0, 12, (2, 33))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_packed_rows_equal_separate_sequences():
    """Sequences packed in one row with seq_idx give each sequence's own logits and gradients."""
    model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=12, d_state=8))
    lengths = [5, 1, 9, 3]
    ids = torch.randint(0, 12, (1, sum(lengths)))
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None]
    packed = model(ids, seq_idx=seq_idx)
    (g_packed,) = torch.autograd.grad(packed.square().mean(), [model.backbone.layers[0].mixer.conv1d.weight])
    pieces = torch.split(ids, lengths, dim=1)
    separate = torch.cat([model(piece) for piece in pieces], dim=1)
    (g_sep,) = torch.autograd.grad(separate.square().mean(), [model.backbone.layers[0].mixer.conv1d.weight])
    torch.testing.assert_close(packed, separate, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_packed, g_sep, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mixer", ["lti", "lti_complex"])
def test_lti_mixer_lm_decodes_like_its_parallel_forward(mixer):
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=7, d_state=4, mixer=mixer)).eval()
    ids = torch.randint(0, 7, (2, 9))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2)
        steps = [model(ids[:, :2], cache=cache)] + [model.step(ids[:, t], cache)[:, None] for t in range(2, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


def test_unknown_mixer_is_rejected():
    with pytest.raises(ValueError, match="'mamba', 'lti' or 'lti_complex'"):
        MambaLM(MambaConfig(d_model=8, n_layer=1, vocab_size=4, mixer="s4"))


def test_checkpointed_mixers_give_the_same_gradients():
    torch.manual_seed(0)
    plain = MambaLM(MambaConfig(d_model=24, n_layer=2, vocab_size=9))
    torch.manual_seed(0)
    ckpt = MambaLM(MambaConfig(d_model=24, n_layer=2, vocab_size=9, checkpoint_mixer=True))
    ids = torch.randint(0, 9, (2, 17))
    for model in (plain, ckpt):
        F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_from_pretrained_reads_a_mamba_ssm_folder(tmp_path):
    """mamba_ssm's config.json (block sizes in ssm_cfg) and a weights-only pytorch_model.bin."""
    import json

    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=11, d_state=8)).eval()
    mamba_ssm_config = {"d_model": 16, "n_layer": 2, "vocab_size": 11, "ssm_cfg": {"d_state": 8, "layer": "Mamba1"},
                        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
                        "pad_vocab_size_multiple": 8, "tie_embeddings": True}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(mamba_ssm_config))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = MambaLM.from_pretrained(tmp_path).eval()
    assert loaded.config.d_state == 8
    ids = torch.randint(0, 11, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids))


@pytest.mark.parametrize("ssm_cfg", [{"layer": "Mamba2"}, {"dt_rank": 4}, {"bias": True}, {"headdim": 64}])
def test_from_pretrained_refuses_what_it_cannot_represent(tmp_path, ssm_cfg):
    import json

    (tmp_path / "config.json").write_text(
        json.dumps({"d_model": 16, "n_layer": 1, "vocab_size": 5, "ssm_cfg": ssm_cfg})
    )
    with pytest.raises(ValueError, match="config"):
        MambaLM.from_pretrained(tmp_path)


def test_fused_triton_decoding_matches_the_torch_path():
    """backend='triton' decodes through the fused add+norm, conv-step and step kernels (the
    interpreter on CPU): logits equal the plain-torch model's at every step."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter without a GPU
    torch.manual_seed(0)
    torch_model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=12, d_state=8, backend="ref")).eval()
    fused = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=12, d_state=8, backend="triton")).eval()
    fused.load_state_dict(torch_model.state_dict())
    torch_model, fused = torch_model.to(device), fused.to(device)
    ids = torch.randint(0, 12, (2, 8), device=device)
    with torch.no_grad():
        caches = torch_model.new_cache(2), fused.new_cache(2)
        for model, cache in zip((torch_model, fused), caches):
            model(ids[:, :3], cache=cache)
        for t in range(3, 8):
            want, got = torch_model.step(ids[:, t], caches[0]), fused.step(ids[:, t], caches[1])
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for a, b in zip(caches[0].tensors(), caches[1].tensors()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_step_constants_follow_parameter_updates():
    """The cached A, D and dt bias of `step` are recomputed after the parameters change."""
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=8, d_state=4)).eval()
    mixer = model.backbone.layers[0].mixer
    with torch.no_grad():
        before = model.step(torch.tensor([1]), model.new_cache(1))
        mixer.A_log.add_(0.5)
        mixer.D.mul_(3.0)
        after = model.step(torch.tensor([1]), model.new_cache(1))
        A, D, _ = mixer._step_constants()
    torch.testing.assert_close(A, -torch.exp(mixer.A_log))
    torch.testing.assert_close(D, mixer.D)
    assert not torch.allclose(before, after)
