r"""The Mamba paper's synthetic tasks (sec. 3.1 / 4.1, app. E.1): selective copying and induction heads.

    python -m pipelines.synthetic copying --mixer mamba --curriculum-start 32 --curriculum-steps 500 --lr 5e-3 \
        --steps 20000 --time-budget 220 --eval-every 250 --target-accuracy 0.995 --device cuda --out runs/copy_s6
    python -m pipelines.synthetic induction --eval-precision fp32 --device cuda --out runs/ind

These are the recipes measured on an H200 (benchmarks/results/synthetic.json): copying 99.85% at 4096
(--mixer lti_complex: 57.3%), induction 100% at every test length 2^6..2^20 on 10 of 14 seeds.
Induction's defaults are its recipe (TASK_DEFAULTS: a curriculum 32 -> 256, Adam without decay,
epsilon 1e-15, 4e-3 constant and 1e-3 from step 16,000, 17,000 steps); copying's are generic.

Both tasks learn far faster from short sequences: `--curriculum-start 32` (doubling every
`--curriculum-steps` up to `--length`) reached 100% induction accuracy at 256 within 200 steps of
batch 64 on CPU (lr 4e-3), where training at 256 from the start (lr 2e-3) was still at chance after 700. With
`--time-budget` the cosine learning-rate schedule ends at the budget (or at `--steps`, if sooner).

Induction heads generalise from 256 to 2^20 only once a few channels (mostly in layer 2) stop
forgetting on noise tokens: median dt there ~1e-10 and below in the models that do, 4e-9 - 1e-7 with
Adam's default epsilon (benchmarks/induction_memory.py measures it). Training at 256 barely asks for
that: the loss is ~1e-8 long before, so the gradients fall below Adam's default epsilon (1e-8) and
its steps stall. With epsilon 1e-15 and a constant rate (the paper's app. E.1: Adam without weight
decay) the steps keep their size, and over ~17,000 steps the dt on noise keeps falling. The rate
drops to 1e-3 for the last 1,000 steps because at a constant 4e-3 the 65,536-token monitor
swings between checkpoints (`--monitor-lengths` follows it while training). `--state-passing` hurt.

Selective copying: `n_tokens` data tokens scattered at random positions of a `length`-long run of
noise, then `n_tokens` markers; at the i-th marker the model must output the i-th data token.
Induction heads: random tokens with a trigger token followed by the answer somewhere, and the
trigger again at the end; the model must output the answer. Both are generated on the fly from
a seeded generator; evaluation sets are fixed by their own seed. Two-layer models, d_model 64.

Prints progress to stderr and one JSON line on stdout (accuracies); the induction task also
writes accuracy against test length to `<out>/induction_accuracy.png`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from core.models import MambaConfig, MambaLM
from core.modules.mamba import Mamba
from pipelines.common import optimizer_groups

IGNORE = -100


def selective_copying_batch(batch: int, length: int, n_tokens: int, vocab: int, generator: torch.Generator):
    """ids, targets: (batch, length + n_tokens). Token 0 is noise, vocab - 1 the marker, data tokens
    are 1..vocab-2; targets are IGNORE except at the markers, which hold the data tokens in order."""
    if not (vocab >= 4 and 1 <= n_tokens <= length):
        raise ValueError(f"selective copying needs vocab >= 4 and 1 <= n_tokens <= length; got {vocab}, {n_tokens}")
    data = torch.randint(1, vocab - 1, (batch, n_tokens), generator=generator)
    # n distinct positions per row, uniformly at random: those of the n smallest of `length` random
    # keys, kept in order (the order of the data tokens is the answer's order). topk is O(length) a
    # row where a full argsort was O(length log length): 15x faster at 64 x 4096 on one CPU thread,
    # and the same positions (the same keys; only ties at the n-th key could differ)
    keys = torch.rand(batch, length, generator=generator)
    positions = keys.topk(n_tokens, dim=1, largest=False, sorted=False).indices.sort(dim=1).values
    context = torch.zeros(batch, length, dtype=torch.long).scatter_(1, positions, data)
    ids = torch.cat([context, torch.full((batch, n_tokens), vocab - 1)], dim=1)
    targets = torch.full_like(ids, IGNORE)
    targets[:, length:] = data
    return ids, targets


def induction_batch(batch: int, length: int, vocab: int, generator: torch.Generator):
    """ids, targets: (batch, length). Token vocab - 1 is the trigger; it appears at a random position p
    followed by the answer, and again at the last position, whose target is the answer."""
    if not (vocab >= 3 and length >= 4):
        raise ValueError(f"induction heads needs vocab >= 3 and length >= 4; got {vocab}, {length}")
    ids = torch.randint(0, vocab - 1, (batch, length), generator=generator)
    trigger = vocab - 1
    p = torch.randint(0, length - 3, (batch,), generator=generator)
    rows = torch.arange(batch)
    ids[rows, p] = trigger
    answer = ids[rows, p + 1]
    ids[:, -1] = trigger
    targets = torch.full_like(ids, IGNORE)
    targets[:, -1] = answer
    return ids, targets


def accuracy(model: MambaLM, batches, bf16: bool | None = None) -> float:
    """Fraction of target positions where the argmax prediction is right, over all (ids, targets) batches
    (bf16 autocast as `_forward`)."""
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            logits = _forward(model, x, bf16)
            mask = y != IGNORE
            correct += (logits.argmax(-1)[mask] == y[mask]).sum().item()
            total += mask.sum().item()
    return correct / total


def fixed_set(make, size: int, batch_size: int, seed: int, device, **kwargs):
    """The same `size` sequences on every call (seeded), made and moved one batch at a time so that a
    set of 2^20-long sequences never sits in memory whole."""
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, size, batch_size):
        yield (t.to(device) for t in make(min(batch_size, size - start), generator, **kwargs))


def _to_device(tensors, device: torch.device) -> tuple[torch.Tensor, ...]:
    """CPU tensors to `device`; to CUDA from pinned memory without blocking: a blocking copy
    synchronises the stream, i.e. waits for the previous step's kernels, once per step (the caching
    host allocator keeps a pinned buffer alive until its copy has run)."""
    if device.type != "cuda":
        return tuple(t.to(device) for t in tensors)
    return tuple(t.pin_memory().to(device, non_blocking=True) for t in tensors)


def _forward(model: MambaLM, ids: torch.Tensor, bf16: bool | None = None, cache=None) -> torch.Tensor:
    """Logits under bf16 autocast (None: on CUDA only, as in training); the scan's maths is float32 either way.
    With `cache`, the sequences start from its states and leave their final states in it."""
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=ids.is_cuda if bf16 is None else bf16):
        return model(ids, cache=cache)


def passed_state(model: MambaLM, cache, batch: int):
    """State passing (Buitrago Ruiz & Gu, arXiv 2507.02782): each training sequence starts from the
    final recurrent state (conv and SSM) that another sequence, row i of the previous batch, ended in,
    detached, so that training sees states older than the training length. Zero states at first."""
    if cache is None or cache.layers[0].ssm_state.shape[0] != batch:
        return model.new_cache(batch)
    for layer in cache.layers:
        layer.conv_state, layer.ssm_state = layer.conv_state.detach(), layer.ssm_state.detach()
    cache.seqlen_offset = 0
    return cache


def _make_task(args):
    if args.task == "copying":
        return lambda n, g, length=None: selective_copying_batch(n, length or args.length, args.n_tokens, args.vocab, g)
    return lambda n, g, length=None: induction_batch(n, length or args.length, args.vocab, g)


def train(args) -> dict:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    torch.manual_seed(args.seed)
    make = _make_task(args)
    if args.init:  # continue from a model this script saved (its own config)
        model = MambaLM.from_pretrained(args.init).to(device)
    else:
        config = MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=args.vocab, mixer=args.mixer)
        model = MambaLM(config)
        if args.dt_min or args.dt_max:
            init_dt_bias(model, args.dt_min or 1e-3, args.dt_max or 1e-1)
        model = model.to(device)
    # decay on matrices only: decaying the dt bias towards 0 (dt = softplus(0) = 0.69) or A_log
    # would pull every state towards forgetting within a few steps, against what both tasks need
    optimizer = torch.optim.AdamW(
        optimizer_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=args.adam_eps
    )
    data_gen = torch.Generator().manual_seed(args.seed)
    bf16_eval = {"auto": None, "bf16": True, "fp32": False}[args.eval_precision]
    losses, curve, long_curve, tokens, start, cache = [], [], {}, 0, time.time(), None
    for step in range(args.steps):
        batch = scheduled(args.batch_after, step, args.batch)
        ids, targets = _to_device(make(batch, data_gen, length=train_length(args, step)), device)
        tokens += ids.numel()
        if args.state_passing:
            cache = passed_state(model, cache, ids.shape[0])
        logits = _forward(model, ids, cache=cache)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = scheduled(args.lr_after, step, args.lr) * lr_factor(args, step, time.time() - start)
        optimizer.step()
        # kept on the device: a .item() every step would make the CPU wait for the GPU each step, so
        # the next batch's data and kernel launches could not overlap this step's GPU work
        losses.append(loss.detach())
        if step % max(1, args.steps // 20) == 0 or step == args.steps - 1:
            print(f"step {step:6d}  loss {loss.item():.4f}  {time.time() - start:.0f}s", file=sys.stderr)
        if args.eval_every and (step + 1) % args.eval_every == 0:
            model.eval()
            # a monitor set at the training length with its own seed, disjoint from the test sets
            monitor = fixed_set(make, args.monitor_size, args.batch, args.seed + 20_000, device)
            curve.append((step + 1, accuracy(model, monitor, bf16_eval)))
            for length in args.monitor_lengths:  # how far the model generalises, as it trains
                longer = fixed_set(make, args.monitor_size, _eval_batch(args, length), args.seed + 20_000, device,
                                   length=length)  # fmt: skip
                long_curve.setdefault(str(length), []).append((step + 1, accuracy(model, longer, bf16_eval)))
            model.train()
            print(f"step {step + 1:6d}  monitor accuracy {curve[-1][1]:.4f}", file=sys.stderr)
            if curve[-1][1] >= args.target_accuracy:  # learnt (the monitor set is not the test set)
                break
        if args.time_budget and time.time() - start > args.time_budget:
            break

    model.eval()
    losses = torch.stack(losses).float().tolist() if losses else []  # waits for the last step
    seconds = max(time.time() - start, 1e-9)
    result = {"task": args.task, "mixer": args.mixer, "seed": args.seed, "steps": len(losses), "max_steps": args.steps,
              "train_length": args.length, "batch": args.batch, "lr": args.lr, "weight_decay": args.weight_decay,
              "adam_eps": args.adam_eps,
              "device": str(device),
              "train_seconds": round(seconds, 1), "train_tokens_per_s": round(tokens / seconds),
              "first_loss": losses[0] if losses else None,
              "final_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
              "monitor_curve": curve, "monitor_curve_by_length": long_curve,
              "curriculum_start": args.curriculum_start or None,
              "lr_schedule": args.lr_schedule, "state_passing": args.state_passing,
              "init": args.init, "lr_after": args.lr_after, "batch_after": args.batch_after}  # fmt: skip
    if args.out:  # the trained model, to evaluate again or continue (--init)
        model.save_pretrained(Path(args.out) / "model")
        result["model"] = str(Path(args.out) / "model")
    test_seed = args.seed + 10_000  # fixed, disjoint from training
    per_length = {}
    for length in args.eval_lengths:
        test_set = fixed_set(make, args.eval_size, _eval_batch(args, length), test_seed, device, length=length)
        per_length[str(length)] = accuracy(model, test_set, bf16=bf16_eval)
        print(f"eval length {length}: accuracy {per_length[str(length)]:.4f}", file=sys.stderr)
    result["accuracy_by_length"] = per_length
    if args.task == "copying":  # the test set at the context length trained for
        result["accuracy"] = per_length[str(args.length)]
    elif args.out:
        result["plot"] = str(plot_accuracy({f"seed {args.seed}": per_length}, Path(args.out), args.length))
    return result


def _eval_batch(args, length: int) -> int:
    """Sequences per evaluation batch at `length`: long ones fewer per batch, the same number in all."""
    return max(1, min(args.batch, args.eval_tokens_per_batch // length))


def lr_factor(args, step: int, elapsed: float) -> float:
    """Linear warm-up over args.warmup steps, then a cosine to 0 at the end of the run: after args.steps
    steps, or after args.time_budget seconds when that comes first, so a run the budget stops still anneals."""
    warmup = min(1.0, (step + 1) / args.warmup)
    if args.lr_schedule == "constant":  # the paper's (app. E.1): a constant rate after the warm-up
        return warmup
    progress = step / args.steps
    if args.time_budget:
        progress = max(progress, elapsed / args.time_budget)
    return warmup * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def scheduled(changes: list, step: int, value):
    """`value` until the first (from_step, new) in `changes` (sorted by step) whose from_step <= step,
    then that change's value: the last one reached wins (--lr-after, --batch-after)."""
    for from_step, new in changes:
        if step >= from_step:
            value = new
    return value


def _step_value(kind):
    """An argparse type for STEP:VALUE, e.g. 1000:1e-3."""

    def parse(text: str):
        step, sep, value = text.partition(":")
        try:
            if not sep or int(step) < 0:
                raise ValueError
            parsed = (int(step), kind(value))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected STEP:VALUE, got {text!r}") from None
        if parsed[1] <= 0:
            raise argparse.ArgumentTypeError(f"the value must be positive, got {text!r}")
        return parsed

    return parse


def init_dt_bias(model: MambaLM, dt_min: float, dt_max: float) -> None:
    """Redraw every selective block's dt bias so that softplus(bias) is log-uniform in [dt_min, dt_max]
    (the block's own init uses [1e-3, 1e-1]): a state then starts out keeping its contents for about
    1 / (dt |A|) steps, which is what a model trained at 256 has to stretch to 2^20 for induction heads."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max; got {dt_min}, {dt_max}")
    for module in model.modules():
        if isinstance(module, Mamba):
            bias = module.dt_proj.bias
            u = torch.rand(bias.shape, dtype=torch.float32)
            dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            with torch.no_grad():  # the inverse softplus, as the block's init
                bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def train_length(args, step: int) -> int:
    """The training length at `step`: args.length, or with a curriculum, curriculum_start doubled
    every curriculum_steps steps up to args.length (the monitor and test sets stay at args.length)."""
    if not args.curriculum_start:
        return args.length
    return min(args.length, args.curriculum_start * 2 ** (step // args.curriculum_steps))


def plot_accuracy(curves: dict, out: Path, train_length: int, name: str = "induction_accuracy.png") -> Path:
    """Accuracy against test length, one line per entry of `curves` ({label: {length: accuracy}})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    colors = plt.cm.tab20.colors if len(curves) > 10 else plt.cm.tab10.colors  # one colour per run
    for (label, per_length), color in zip(curves.items(), colors * len(curves)):
        ax.plot([int(k) for k in per_length], [100 * v for v in per_length.values()], "o-", ms=3, lw=1,
                color=color, label=label)  # fmt: skip
    ax.axvline(train_length, color="gray", ls="--", lw=1, label=f"train length {train_length}")
    ax.set(xscale="log", xlabel="test sequence length", ylabel="accuracy (%)", ylim=(0, 102),
           title="Induction heads: length generalisation")  # fmt: skip
    ax.legend(fontsize=6, ncol=2 if len(curves) > 6 else 1, loc="lower left")
    fig.tight_layout()
    path = out / name
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# Training defaults by task. Induction's are the recipe measured on an H200 (100% at every test
# length up to 2^20 on 10 of 14 seeds; benchmarks/results/synthetic.json); copying's are generic, and
# its measured recipe (README) adds a curriculum and a time budget, which depends on the machine.
TASK_DEFAULTS = {
    "copying": dict(length=4096, steps=4000, lr=1e-3, warmup=100, lr_schedule="cosine", lr_after=[], weight_decay=0.1,
                    adam_eps=1e-8, curriculum_start=0, curriculum_steps=500),
    "induction": dict(length=256, steps=17000, lr=4e-3, warmup=50, lr_schedule="constant", lr_after=[(16000, 1e-3)],
                      weight_decay=0.0, adam_eps=1e-15, curriculum_start=32, curriculum_steps=100),
}  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["copying", "induction"])
    p.add_argument("--mixer", default="mamba", choices=["mamba", "lti", "lti_complex"])
    p.add_argument(
        "--length", type=int, default=None, help="copying: context length (4096); induction: train length (256)"
    )
    p.add_argument("--n-tokens", type=int, default=16, help="copying: tokens to memorise")
    p.add_argument("--vocab", type=int, default=16)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--steps", type=int, help="training steps (copying 4000, induction 17000); 0: only evaluate --init")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, help="copying 1e-3, induction 4e-3")
    p.add_argument("--warmup", type=int, help="copying 100, induction 50")
    p.add_argument("--lr-schedule", choices=["cosine", "constant"],
                   help="after the linear warm-up: a cosine to 0 at the end of the run (copying), or constant "
                        "(induction)")  # fmt: skip
    p.add_argument("--lr-after", type=_step_value(float), nargs="+", metavar="STEP:LR",
                   help="from STEP on, the base rate is LR (times the schedule), e.g. 1000:1e-3 (copying: none, "
                        "induction: 16000:1e-3)")  # fmt: skip
    p.add_argument("--batch-after", type=_step_value(int), nargs="+", default=[], metavar="STEP:BATCH",
                   help="from STEP on, train at batch BATCH (monitor and test sets keep --batch)")  # fmt: skip
    p.add_argument("--weight-decay", type=float, help="AdamW decay on weight matrices only (copying 0.1, induction 0)")
    p.add_argument("--adam-eps", type=float,
                   help="Adam's epsilon (copying 1e-8, induction 1e-15): once the loss is ~1e-8 the gradients "
                        "fall below 1e-8 and the updates stall")  # fmt: skip
    p.add_argument("--eval-size", type=int, default=512, help="sequences in each fixed evaluation set")
    p.add_argument("--eval-every", type=int, default=0, help="steps between monitor evaluations (0: none)")
    p.add_argument("--monitor-size", type=int, default=256, help="sequences in the monitor set (training length)")
    p.add_argument("--monitor-lengths", type=int, nargs="+", default=[],
                   help="also score monitor sets of these lengths at each --eval-every (not for stopping)")  # fmt: skip
    p.add_argument("--target-accuracy", type=float, default=1.01, help="stop when the monitor accuracy reaches it")
    p.add_argument("--time-budget", type=float, default=0,
                   help="stop training after this many seconds, the cosine ending there (0: none)")  # fmt: skip
    p.add_argument("--eval-lengths", type=int, nargs="+", default=None,
                   help="test lengths; induction: 2^6..2^20, copying: --length (always evaluated)")  # fmt: skip
    p.add_argument("--eval-precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="autocast of monitor and test sets (auto: bf16 on CUDA as training, fp32 on CPU)")  # fmt: skip
    p.add_argument("--eval-tokens-per-batch", type=int, default=2**22)
    p.add_argument("--curriculum-start", type=int,
                   help="train from this length, doubling (0: none; copying 0, induction 32)")  # fmt: skip
    p.add_argument("--curriculum-steps", type=int, help="steps between doublings of the length (500, induction 100)")
    p.add_argument("--dt-min", type=float, default=0, help="redraw the dt bias: softplus(bias) from here (1e-3)")
    p.add_argument("--dt-max", type=float, default=0, help="... to here (1e-1), log-uniform; not with --init")
    p.add_argument("--state-passing", action="store_true",
                   help="each training sequence starts from a previous one's final state (2507.02782)")  # fmt: skip
    p.add_argument("--init", default=None, help="start from a model folder this script saved (<out>/model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    for name, value in TASK_DEFAULTS[args.task].items():  # what the command line left unset
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.lr_after, args.batch_after = sorted(args.lr_after), sorted(args.batch_after)
    if args.steps == 0 and not args.init:
        p.error("--steps 0 only evaluates a saved model: give it with --init")
    if args.task == "copying" and 0 < args.curriculum_start < args.n_tokens:
        p.error(f"--curriculum-start {args.curriculum_start} is shorter than --n-tokens {args.n_tokens}")
    if args.eval_lengths is None:
        args.eval_lengths = [2**k for k in range(6, 21)] if args.task == "induction" else []
    if args.task == "copying" and args.length not in args.eval_lengths:
        args.eval_lengths = [*args.eval_lengths, args.length]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = train(args)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
