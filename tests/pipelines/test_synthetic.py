"""The synthetic tasks: generators put the answer where it belongs, and a tiny model learns on CPU."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import pipelines.synthetic as synthetic
from core.models import MambaConfig, MambaLM
from pipelines.synthetic import (
    IGNORE,
    _forward,
    accuracy,
    fixed_set,
    induction_batch,
    init_dt_bias,
    lr_factor,
    main,
    parse_args,
    passed_state,
    scheduled,
    selective_copying_batch,
    train_length,
)

ROOT = Path(__file__).resolve().parents[2]


def test_copying_answer_is_the_scattered_tokens_in_order():
    ids, targets = selective_copying_batch(
        8, length=50, n_tokens=5, vocab=10, generator=torch.Generator().manual_seed(0)
    )
    assert ids.shape == targets.shape == (8, 55)
    for row_ids, row_targets in zip(ids, targets):
        context, markers = row_ids[:50], row_ids[50:]
        data = context[context != 0]
        assert len(data) == 5 and ((data >= 1) & (data <= 8)).all()  # never noise, never the marker
        assert (markers == 9).all()
        assert torch.equal(row_targets[50:], data)  # the answer is fully determined by the input
        assert (row_targets[:50] == IGNORE).all()


def test_copying_positions_vary_and_the_generator_is_seeded():
    g = lambda: torch.Generator().manual_seed(3)
    a, _ = selective_copying_batch(16, 40, 4, 8, g())
    b, _ = selective_copying_batch(16, 40, 4, 8, g())
    assert torch.equal(a, b)
    first_positions = (a[:, :40] != 0).float().argmax(1)
    assert len(set(first_positions.tolist())) > 3


def test_copying_positions_are_those_of_the_smallest_keys():
    # the positions are the n smallest of `length` uniform keys per row (a uniform n-subset): the same
    # data as the earlier full argsort of the keys, so the CPU study's runs keep their batches
    g = torch.Generator().manual_seed(5)
    ids, _ = selective_copying_batch(16, 300, 7, 12, g)
    g = torch.Generator().manual_seed(5)
    data = torch.randint(1, 11, (16, 7), generator=g)
    expected = torch.rand(16, 300, generator=g).argsort(dim=1)[:, :7].sort(dim=1).values
    context = ids[:, :300]
    assert torch.equal((context != 0).nonzero()[:, 1].view(16, 7), expected)
    assert torch.equal(context[context != 0].view(16, 7), data)


def test_copying_positions_are_uniform_over_the_context():
    ids, _ = selective_copying_batch(4000, 32, 4, 8, torch.Generator().manual_seed(0))
    counts = (ids[:, :32] != 0).sum(0).float()  # 500 expected at each position, std ~21
    assert (counts - 500).abs().max() < 100


def test_induction_answer_follows_the_first_trigger():
    ids, targets = induction_batch(32, length=30, vocab=8, generator=torch.Generator().manual_seed(1))
    for row_ids, row_targets in zip(ids, targets):
        where = (row_ids == 7).nonzero().flatten().tolist()
        assert len(where) == 2 and where[1] == 29  # once inside, once at the end
        assert row_targets[29] == row_ids[where[0] + 1]
        assert (row_targets[:29] == IGNORE).all()


@pytest.mark.parametrize("bad", [dict(n_tokens=0), dict(vocab=3), dict(n_tokens=60)])
def test_copying_rejects_impossible_settings(bad):
    kwargs = dict(batch=1, length=50, n_tokens=5, vocab=10, generator=torch.Generator())
    with pytest.raises(ValueError, match="selective copying"):
        selective_copying_batch(**{**kwargs, **bad})


def test_tiny_copying_run_learns_on_cpu(tmp_path, capsys):
    result = main(["copying", "--length", "12", "--n-tokens", "2", "--vocab", "6", "--d-model", "32",
                   "--steps", "40", "--batch", "32", "--lr", "3e-3", "--warmup", "5", "--eval-size", "64",
                   "--device", "cpu", "--out", str(tmp_path)])  # fmt: skip
    assert result["final_loss"] < 0.8 * result["first_loss"]
    assert 0.0 <= result["accuracy"] <= 1.0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result


def test_tiny_induction_run_evaluates_each_length_and_plots(tmp_path):
    result = main(["induction", "--length", "16", "--vocab", "6", "--d-model", "16", "--steps", "30",
                   "--batch", "16", "--eval-size", "16", "--eval-lengths", "8", "32", "--device", "cpu",
                   "--out", str(tmp_path)])  # fmt: skip
    assert set(result["accuracy_by_length"]) == {"8", "32"}
    assert result["final_loss"] < result["first_loss"]
    assert (tmp_path / "induction_accuracy.png").stat().st_size > 1000


def test_curriculum_doubles_the_training_length_up_to_the_target():
    args = parse_args(["copying", "--length", "4096", "--curriculum-start", "256", "--curriculum-steps", "100"])
    lengths = [train_length(args, step) for step in (0, 99, 100, 250, 399, 400, 10_000)]
    assert lengths == [256, 256, 512, 1024, 2048, 4096, 4096]
    assert train_length(parse_args(["copying", "--length", "64"]), 5) == 64  # no curriculum


def test_saved_model_continues_with_init_and_early_stop_and_budget(tmp_path):
    common = ["--length", "16", "--vocab", "6", "--d-model", "16", "--batch", "8", "--eval-size", "8",
              "--eval-lengths", "16", "--device", "cpu", "--monitor-size", "8"]  # fmt: skip
    first = main(["induction", *common, "--steps", "4", "--out", str(tmp_path / "a")])
    model_dir = Path(first["model"])
    assert (model_dir / "model.safetensors").exists()
    # the monitor reaches a target of 0 at once: training stops at the first evaluation
    again = main(["induction", *common, "--steps", "50", "--eval-every", "2", "--target-accuracy", "0",
                  "--init", str(model_dir), "--out", str(tmp_path / "b")])  # fmt: skip
    assert again["steps"] == 2 and len(again["monitor_curve"]) == 1
    # started from the saved weights: its first loss is the first run's last, not a fresh model's
    fresh = main(["induction", *common, "--steps", "2", "--out", str(tmp_path / "c")])
    assert abs(again["first_loss"] - fresh["first_loss"]) > 1e-6


def test_time_budget_stops_a_run_without_monitor_evaluations():
    # the budget used to be checked only at monitor evaluations: with --eval-every 0 it never stopped
    result = main(["copying", "--length", "12", "--n-tokens", "2", "--vocab", "6", "--d-model", "16",
                   "--steps", "200", "--batch", "4", "--eval-size", "4", "--device", "cpu",
                   "--time-budget", "1e-6"])  # fmt: skip
    assert result["steps"] == 1


def test_cosine_ends_at_the_time_budget_when_that_comes_first():
    args = parse_args(["copying", "--steps", "1000", "--warmup", "1", "--time-budget", "100"])
    assert lr_factor(args, 0, 0.0) == 1.0
    assert lr_factor(args, 10, 50.0) == pytest.approx(0.5)  # half the budget spent: half way down
    assert lr_factor(args, 500, 1.0) == pytest.approx(0.5)  # half the steps done
    assert lr_factor(args, 10, 150.0) == 0.0
    no_budget = parse_args(["copying", "--steps", "1000", "--warmup", "10"])
    assert lr_factor(no_budget, 4, 1e9) == pytest.approx(0.5, abs=1e-3)  # warm-up; time plays no part
    assert lr_factor(no_budget, 1000, 0.0) == 0.0


def test_constant_schedule_holds_the_rate_after_the_warmup():
    args = parse_args(["induction", "--steps", "1000", "--warmup", "10", "--lr-schedule", "constant",
                       "--time-budget", "100"])  # fmt: skip
    assert lr_factor(args, 4, 0.0) == pytest.approx(0.5)
    assert lr_factor(args, 9, 0.0) == lr_factor(args, 999, 1e9) == 1.0


def test_state_passing_continues_from_the_previous_batch_final_state():
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=8))
    first, second = torch.randint(0, 8, (3, 12)), torch.randint(0, 8, (3, 9))
    cache = passed_state(model, None, 3)  # zero states at first: the same as no cache
    assert torch.allclose(_forward(model, first, cache=cache), model(first), atol=1e-5)
    cache = passed_state(model, cache, 3)
    assert all(not layer.ssm_state.requires_grad for layer in cache.layers)  # detached
    # the second batch runs on as if each row were the continuation of the first batch's row
    continued = _forward(model, second, cache=cache)
    assert torch.allclose(continued, model(torch.cat([first, second], 1))[:, 12:], atol=1e-4)
    assert passed_state(model, cache, 5).layers[0].ssm_state.abs().sum() == 0  # new batch size: zeros


def test_tiny_induction_run_with_state_passing_learns(tmp_path):
    result = main(["induction", "--length", "16", "--vocab", "6", "--d-model", "16", "--steps", "30",
                   "--batch", "16", "--eval-size", "16", "--eval-lengths", "16", "--device", "cpu",
                   "--state-passing", "--lr-schedule", "constant", "--weight-decay", "0"])  # fmt: skip
    assert result["state_passing"] and result["lr_schedule"] == "constant"
    assert result["final_loss"] < result["first_loss"]


def test_copying_reports_accuracy_at_each_test_length():
    result = main(["copying", "--length", "12", "--n-tokens", "2", "--vocab", "6", "--d-model", "16",
                   "--steps", "2", "--batch", "4", "--eval-size", "8", "--eval-lengths", "8", "48",
                   "--device", "cpu"])  # fmt: skip
    assert set(result["accuracy_by_length"]) == {"8", "12", "48"}  # the training length always
    assert result["accuracy"] == result["accuracy_by_length"]["12"]


def test_copying_curriculum_must_hold_the_tokens():
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["copying", "--n-tokens", "16", "--curriculum-start", "8"])
    assert exit_info.value.code == 2


def test_eval_precision_picks_the_autocast():
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=8)).eval()
    ids = torch.randint(0, 8, (2, 10))
    with torch.no_grad():
        assert _forward(model, ids).dtype == torch.float32  # CPU default: no autocast
        assert _forward(model, ids, bf16=True).dtype == torch.bfloat16
    assert parse_args(["induction", "--eval-precision", "fp32"]).eval_precision == "fp32"


def test_dt_bias_redrawn_in_the_asked_range():
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=8))
    init_dt_bias(model, 1e-5, 1e-4)
    for layer in model.backbone.layers:
        dt = torch.nn.functional.softplus(layer.mixer.dt_proj.bias.double())
        assert dt.min() >= 1e-5 * 0.999 and dt.max() <= 1e-4 * 1.001
        assert dt.max() / dt.min() > 3  # spread over the range, not one value
    with pytest.raises(ValueError, match="dt_min"):
        init_dt_bias(model, 1e-2, 1e-3)


def test_lr_after_and_batch_after_parse_and_switch_at_their_steps():
    args = parse_args(["induction", "--lr", "4e-3", "--batch", "64", "--lr-after", "2000:5e-4", "1000:1e-3",
                       "--batch-after", "1000:8"])  # fmt: skip
    assert args.lr_after == [(1000, 1e-3), (2000, 5e-4)]  # sorted by step
    lrs = [scheduled(args.lr_after, step, args.lr) for step in (0, 999, 1000, 1999, 2000, 10**6)]
    assert lrs == [4e-3, 4e-3, 1e-3, 1e-3, 5e-4, 5e-4]
    assert [scheduled(args.batch_after, step, args.batch) for step in (999, 1000)] == [64, 8]
    assert scheduled(parse_args(["copying"]).lr_after, 10**6, 0.1) == 0.1  # none given: unchanged


def test_induction_defaults_are_the_measured_recipe_and_flags_override_them():
    """`induction` with no training flags is the recipe of benchmarks/results/synthetic.json (the
    README's long command spelled out); given flags win, falsy ones included; copying keeps its own."""
    recipe = ("--curriculum-start 32 --curriculum-steps 100 --lr 4e-3 --warmup 50 --lr-schedule constant "
              "--weight-decay 0 --adam-eps 1e-15 --steps 17000 --lr-after 16000:1e-3").split()  # fmt: skip
    assert vars(parse_args(["induction"])) == vars(parse_args(["induction", *recipe]))
    changed = parse_args(["induction", "--curriculum-start", "0", "--weight-decay", "0.1", "--lr-after", "5:1e-4"])
    assert (changed.curriculum_start, changed.weight_decay, changed.lr_after) == (0, 0.1, [(5, 1e-4)])
    assert changed.adam_eps == 1e-15 and changed.steps == 17000
    copying = parse_args(["copying"])
    assert (copying.lr, copying.adam_eps, copying.curriculum_start, copying.lr_after) == (1e-3, 1e-8, 0, [])


@pytest.mark.parametrize("bad", ["1000", "x:1e-3", "-1:1e-3", "10:0", "10:abc"])
def test_lr_after_rejects_malformed_changes(bad):
    with pytest.raises(SystemExit):
        parse_args(["induction", "--lr-after", bad])


def test_lr_after_sets_the_rate_and_batch_after_the_batch_in_training(tmp_path, monkeypatch):
    sizes = []
    real = synthetic.induction_batch
    monkeypatch.setattr(synthetic, "induction_batch", lambda n, *a: sizes.append(n) or real(n, *a))
    common = ["--length", "16", "--vocab", "6", "--d-model", "16", "--batch", "8", "--eval-size", "8",
              "--eval-lengths", "16", "--device", "cpu", "--lr", "1e-2", "--warmup", "1",
              "--lr-schedule", "constant"]  # fmt: skip
    three = main(["induction", *common, "--steps", "3", "--out", str(tmp_path / "a")])
    sizes.clear()
    # three more steps at a rate of ~0 (and batch 2) leave the weights where the first three put them
    six = main(["induction", *common, "--steps", "6", "--lr-after", "3:1e-12", "--batch-after", "3:2",
                "--out", str(tmp_path / "b")])  # fmt: skip
    assert sizes == [8, 8, 8, 2, 2, 2, 8]  # six training batches, then the test set at --batch
    assert six["lr_after"] == [(3, 1e-12)] and six["batch_after"] == [(3, 2)]
    a = MambaLM.from_pretrained(three["model"]).state_dict()
    b = MambaLM.from_pretrained(six["model"]).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-8) for k in a)
    # without the change, the same three extra steps do move them
    moved = main(["induction", *common, "--steps", "6", "--out", str(tmp_path / "c")])
    c = MambaLM.from_pretrained(moved["model"]).state_dict()
    assert any(not torch.allclose(a[k], c[k], atol=1e-4) for k in a)


def test_adam_eps_reaches_the_optimiser(tmp_path):
    """A huge epsilon makes Adam's steps lr * m / (sqrt(v) + eps) vanish: two such runs end at the
    same (initial) weights, which the default epsilon moves."""
    common = ["induction", "--length", "16", "--vocab", "6", "--d-model", "16", "--batch", "8", "--eval-size", "8",
              "--eval-lengths", "16", "--device", "cpu", "--lr", "1e-2", "--warmup", "1", "--steps", "3",
              "--lr-schedule", "constant"]  # fmt: skip
    runs = {eps: main([*common, "--adam-eps", eps, "--out", str(tmp_path / eps)]) for eps in ("1e6", "1e9", "1e-8")}
    assert runs["1e6"]["adam_eps"] == 1e6
    a, b, c = (MambaLM.from_pretrained(runs[eps]["model"]).state_dict() for eps in ("1e6", "1e9", "1e-8"))
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)
    assert not all(torch.allclose(a[k], c[k], atol=1e-4) for k in a)


def test_steps_0_evaluates_the_init_model_as_trained(tmp_path):
    """--steps 0 --init M scores the saved model on the same test sets, unchanged; without --init it
    is a usage error."""
    common = ["induction", "--length", "16", "--vocab", "6", "--d-model", "16", "--batch", "8", "--eval-size", "16",
              "--eval-lengths", "16", "64", "--device", "cpu", "--lr", "1e-2", "--warmup", "1"]  # fmt: skip
    trained = main([*common, "--steps", "5", "--out", str(tmp_path / "a")])
    again = main([*common, "--steps", "0", "--init", trained["model"], "--out", str(tmp_path / "b")])
    assert again["steps"] == 0 and again["final_loss"] is None
    assert again["accuracy_by_length"] == trained["accuracy_by_length"]
    a = MambaLM.from_pretrained(trained["model"]).state_dict()
    b = MambaLM.from_pretrained(again["model"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit) as exit_:
        parse_args(["induction", "--steps", "0"])
    assert exit_.value.code == 2


def test_monitor_lengths_follow_longer_sets_as_the_model_trains(tmp_path):
    """--monitor-lengths scores monitor sets of other lengths at every --eval-every: one point per
    evaluation and length, and the last is the saved model's accuracy on that length's monitor set."""
    result = main(["induction", "--length", "16", "--vocab", "6", "--d-model", "16", "--batch", "8",
                   "--steps", "6", "--eval-every", "3", "--monitor-size", "12", "--monitor-lengths", "32", "64",
                   "--eval-size", "8", "--eval-lengths", "16", "--eval-tokens-per-batch", "128", "--lr", "1e-2",
                   "--warmup", "1", "--device", "cpu", "--seed", "4", "--out", str(tmp_path)])  # fmt: skip
    curves = result["monitor_curve_by_length"]
    assert set(curves) == {"32", "64"}
    assert all([step for step, _ in curve] == [3, 6] for curve in curves.values())
    model = MambaLM.from_pretrained(result["model"]).eval()
    for length in (32, 64):
        per_batch = min(8, 128 // length)  # as the run batches them (--eval-tokens-per-batch)
        monitor = fixed_set(lambda n, g, length: induction_batch(n, length, 6, g), 12, per_batch, 4 + 20_000, "cpu",
                            length=length)  # fmt: skip
        assert curves[str(length)][-1][1] == pytest.approx(accuracy(model, monitor, bf16=False))


def _load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_induction_draws_every_induction_run_and_names_a_file_without_any(tmp_path):
    """benchmarks/plot_induction.py: one line per induction result (copying lines skipped); a file
    without induction results is an error naming it, and writes no PNG."""
    lines = [
        {"task": "induction", "seed": 1, "train_length": 256, "accuracy_by_length": {"64": 1.0, "1024": 0.5}},
        {"task": "induction", "seed": 0, "train_length": 256, "accuracy_by_length": {"64": 1.0, "1024": 1.0}},
        {"task": "copying", "seed": 0, "accuracy_by_length": {"4096": 0.9}},
    ]
    results = tmp_path / "runs.jsonl"
    results.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    drawn = {}
    plot = _load_benchmark("plot_induction")
    real = plot.plot_accuracy
    plot.plot_accuracy = lambda curves, *a, **k: drawn.update(curves) or real(curves, *a, **k)
    out = plot.main([str(results), "--out", str(tmp_path / "acc.png")])
    assert out == tmp_path / "acc.png" and out.stat().st_size > 1000
    assert drawn == {"seed 0": lines[1]["accuracy_by_length"], "seed 1": lines[0]["accuracy_by_length"]}
    copying_only = tmp_path / "copying.jsonl"
    copying_only.write_text(json.dumps(lines[2]) + "\n")
    with pytest.raises(SystemExit, match="copying.jsonl holds no induction result"):
        plot.main([str(copying_only), "--out", str(tmp_path / "none.png")])
    assert not (tmp_path / "none.png").exists()


def test_induction_memory_finds_the_channel_that_never_forgets(tmp_path, capsys):
    """benchmarks/induction_memory.py reads dt at each scan: a layer-2 channel whose dt is ~1e-13
    whatever the input keeps its states over 65,536 noise steps (retention ~1) and ranks first; one
    at dt ~5 keeps nothing. The model's own forward is unchanged by the recording."""
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=6)).eval()
    mixer = model.backbone.layers[1].mixer
    with torch.no_grad():
        mixer.dt_proj.weight[:2].zero_()
        mixer.dt_proj.bias[0] = -30.0  # softplus: ~1e-13
        mixer.dt_proj.bias[1] = 5.0
    model.save_pretrained(tmp_path / "model")
    memory = _load_benchmark("induction_memory")
    ids, _ = induction_batch(2, 64, 6, torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids)
        with memory.scan_inputs() as calls:
            during = model(ids)
    assert len(calls) == 2 and torch.equal(before, during)
    result = memory.main([str(tmp_path / "model"), "--length", "256", "--batch", "2", "--top", "128"])
    layer2 = {c["channel"]: c for c in result["layers"][1]["channels"]}
    assert result["layers"][1]["channels"][0]["channel"] == 0
    assert layer2[0]["retention_65536"] > 0.999 and layer2[0]["dt_noise_median"] < 1e-12
    assert layer2[1]["retention_65536"] < 1e-6
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
