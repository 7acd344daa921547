"""`mamba-audio`: fetch data, pretrain, evaluate and sample SaShiMi-style Mamba models on raw 8-bit audio.

    mamba-audio pretrain --out runs/speech                     # bundled 8 kHz speech clips
    mamba-audio fetch sc09                                     # JSON "data": the folder for --data
    mamba-audio pretrain --data clips/ --sample-rate 16000 --length 16000 --max-steps 5000 --out runs/sc09
    mamba-audio pretrain --data beethoven/ --quantization linear --mode windows --length 16000 --out runs/bt
    mamba-audio pretrain --pack --length 16384 --out runs/packed   # whole clips end to end, no padding
    mamba-audio bpb --checkpoint runs/speech --data clips/ --lengths 256,1024,4096 --out runs/speech/bpb
    mamba-audio generate --checkpoint runs/speech --num 4 --seconds 1 --out runs/speech/samples

Logs and progress go to stderr; the last stdout line is one JSON object. Bad input (missing or
corrupt files, bad lengths): exit code 2 and one line on stderr, with no half-written output.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from . import quantize
from .errors import AudioDatasetError, CheckpointError

SAMPLE_DATA = Path(__file__).resolve().parent / "sample_data"
PROG = "mamba-audio"


# ----------------------------------------------------------------------------- argument parsing


def _int_list(text: str) -> list[int]:
    import argparse

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser():
    from pipelines.common import ArgumentParser

    parser = ArgumentParser(prog=PROG, description="Mamba / SaShiMi models of raw 8-bit (mu-law or linear) audio")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("pretrain", help="train an autoregressive model on a folder of audio")
    common(p)
    p.add_argument("--data", default=None, help="folder of .wav/.flac/.ogg (recursive); default: bundled speech clips")
    p.add_argument(
        "--sample-rate",
        type=int,
        default=None,
        help="model rate in Hz; default: the files' own rate when they all share one",
    )
    p.add_argument("--length", type=int, default=4096, help="samples per training example")
    p.add_argument(
        "--mode",
        default="clips",
        choices=["clips", "windows"],
        help="clips: one padded/cropped example per file; windows: cut long files into windows",
    )
    p.add_argument(
        "--pack",
        action="store_true",
        help="train on whole clips packed end to end into rows of --length (no padding or cropping); "
        "needs selective (mamba) stages; validation keeps --mode",
    )
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--val-every", type=int, default=None, help="validate every N steps (default: at the end)")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--n-layer", type=int, default=2, help="blocks per stage")
    p.add_argument("--pool", type=_int_list, default=[4, 4])
    p.add_argument("--expand", type=int, default=2)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument(
        "--stage-blocks",
        type=_str_list,
        default=None,
        help="comma-separated mamba|lti per stage, outer first (default: all mamba)",
    )
    p.add_argument("--lti-complex", action="store_true", help="LTI stages use complex S4D-Lin A (default real)")
    p.add_argument(
        "--quantization",
        default=quantize.DEFAULT,
        choices=list(quantize.QUANTIZERS),
        help="8-bit classes: mulaw (SaShiMi's default) or linear (SaShiMi's Beethoven); stored in the checkpoint",
    )
    p.add_argument(
        "--split",
        type=lambda s: tuple(float(v) for v in s.split(",")),
        default=(0.88, 0.06, 0.06),
        help="train,valid,test fractions of the files (ignored for a folder with validation_list.txt "
        "and testing_list.txt: those lists split it, as in Speech Commands / SC09)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.ckpt")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between last.ckpt saves")
    p.add_argument("--log-every", type=int, default=10, help="steps between metrics.csv rows")
    p.add_argument("--devices", type=int, default=1, help="GPUs (or CPU processes) per node")
    p.add_argument("--num-nodes", type=int, default=1, help="nodes (under SLURM or torchrun)")
    p.add_argument("--strategy", default="auto", choices=["auto", "ddp", "fsdp"], help="multi-device strategy")
    p.add_argument("--out", required=True)

    p = sub.add_parser("bpb", help="bits per sample of a trained model on a folder of audio")
    common(p)
    p.add_argument("--checkpoint", required=True, help="run folder, model.safetensors or last.ckpt")
    p.add_argument("--data", default=None, help="audio folder; default: bundled speech clips")
    p.add_argument(
        "--split",
        default="all",
        choices=["all", "train", "valid", "test"],
        help="evaluate one split of the folder (its split lists if it has them, else pretrain's seed and "
        "fractions) or all files",
    )
    p.add_argument("--length", type=int, default=None, help="samples per example (default: the training length)")
    p.add_argument("--mode", default=None, choices=["clips", "windows"], help="default: the training mode")
    p.add_argument(
        "--lengths",
        type=_int_list,
        default=None,
        help="comma-separated context lengths: BPB against context, plotted to OUT/bpb_vs_length.png",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None, help="folder for the BPB plot and JSON (needed with --lengths)")

    p = sub.add_parser("generate", help="sample audio from a trained model")
    common(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--num", type=int, default=1, help="number of clips")
    p.add_argument("--seconds", type=float, required=True, help="duration of each generated clip")
    p.add_argument("--batch-size", type=int, default=None, help="clips sampled in parallel (default: all)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--prompt", default=None, help="wav to continue (resampled to the model rate)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("fetch", help="download, verify and unpack a data set of data_manifests (sc09, ...)")
    p.add_argument("name", help="manifest name: sc09, youtubemix, beethoven")
    p.add_argument("--dest", default=None, help="download folder (default: $MAMBA_AUDIO_DATA/NAME or ~/.cache)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server")
    return parser


# ----------------------------------------------------------------------------- shared helpers


def _data_dir(data: str | None) -> Path:
    return SAMPLE_DATA if data is None else Path(data)


def _infer_rate(data_dir: Path) -> int:
    """The one sample rate all files of the folder share; ask for --sample-rate otherwise."""
    import soundfile as sf

    from .io import list_audio_files

    rates = set()
    for path in list_audio_files(data_dir):
        try:
            rates.add(sf.info(str(path)).samplerate)
        except Exception:  # unreadable files are reported (or skipped) when the data is read
            continue
    if len(rates) != 1:
        raise AudioDatasetError(
            f"files under {data_dir} have sample rates {sorted(rates) or 'unknown'}; pass --sample-rate HZ"
        )
    return rates.pop()


def _load(checkpoint: str, device: str):
    """(Sashimi on `device` in eval mode, config.json dict) from a run folder, model.safetensors or .ckpt."""
    from core.models.sashimi import Sashimi, SashimiConfig
    from pipelines.common import load_exported

    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; pass the --out folder of `mamba-audio pretrain`")
    if path.is_file() and path.suffix == ".ckpt":
        config_file = path.parent / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{config_file} not found beside {path}; it is written when pretrain starts")
        info = json.loads(config_file.read_text())
        try:
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
        state = {k.removeprefix("model."): v for k, v in ckpt.get("state_dict", {}).items()}
    else:
        info, state = load_exported(path)
    if info.get("task") != "audio-ar":
        raise CheckpointError(f"{checkpoint} is not a mamba-audio model (config.json task={info.get('task')!r})")
    names = {f.name for f in dataclasses.fields(SashimiConfig)}
    model = Sashimi(SashimiConfig(**{k: v for k, v in info.items() if k in names}))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"weights in {checkpoint} do not match its config.json: {err}") from err
    return model.to(device).eval(), info


def _config_payload(config, sample_rate_hz: int, length_samples: int, mode: str, quantization: str) -> dict:
    payload = dataclasses.asdict(config)
    payload.update(
        task="audio-ar",
        sample_rate_hz=sample_rate_hz,
        length_samples=length_samples,
        mode=mode,
        quantization=quantization,
        encoding=quantize.ENCODING_NAMES[quantization],
    )
    return payload


def _quantization(info: dict, checkpoint: str) -> str:
    """The quantiser a checkpoint was trained with (mu-law for checkpoints older than the field)."""
    name = info.get("quantization", quantize.DEFAULT)
    if name not in quantize.QUANTIZERS:
        raise CheckpointError(f"{checkpoint}: config.json has unknown quantization {name!r}")
    return name


# ----------------------------------------------------------------------------- commands


def pretrain(args) -> dict:
    from core.models.sashimi import Sashimi, SashimiConfig
    from mamba_audio.datasets import split_method, unigram_entropy_bits
    from mamba_audio.generation import bits_per_sample
    from pipelines import common
    from pipelines.audio import AudioDataModule, AudioLM, target_samples
    from pipelines.throughput import Throughput

    start = time.perf_counter()
    device = common.resolve_device(args.device)
    data_dir = _data_dir(args.data)
    rate = args.sample_rate or _infer_rate(data_dir)
    n_stages = len(args.pool) + 1
    blocks = tuple(args.stage_blocks) if args.stage_blocks else ("mamba",) * n_stages
    config = SashimiConfig(
        d_model=args.d_model,
        n_layer=args.n_layer,
        pool=tuple(args.pool),
        expand=args.expand,
        stage_blocks=blocks,
        d_state=args.d_state,
        lti_complex=args.lti_complex,
    )
    if args.length % config.total_pool:
        raise AudioDatasetError(
            f"--length {args.length} must be a multiple of the total pooling factor "
            f"{config.total_pool} (pool {list(config.pool)})"
        )
    for flag in ("max_steps", "batch_size", "log_every", "devices", "num_nodes"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1; got {getattr(args, flag)}")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be >= 1; got {args.checkpoint_every}")
    if args.pack and "lti" in config.stage_blocks:
        raise ValueError(
            f"--pack needs selective stages, but --stage-blocks {','.join(config.stage_blocks)} has 'lti': "
            "its FFT convolution cannot restart between packed clips; use mamba stages or drop --pack"
        )
    common.seed_everything(args.seed)
    pack_align = config.total_pool if args.pack else None
    data = AudioDataModule(
        str(data_dir),
        rate,
        args.length,
        args.mode,
        args.batch_size,
        args.split,
        args.seed,
        quantization=args.quantization,
        pack_align=pack_align,
    )
    data.setup("fit")  # read and split now: bad files fail before any output is written
    model = Sashimi(config)
    module = AudioLM(model, learning_rate=args.lr, max_steps=args.max_steps, warmup_steps=min(20, args.max_steps // 10))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = _config_payload(config, rate, args.length, args.mode, args.quantization)
    if common.is_global_zero():  # one writer; the other ranks run the same command line
        with common.atomic_path(out / "config.json") as tmp:  # lets bpb/generate read last.ckpt
            tmp.write_text(json.dumps(payload, indent=2) + "\n")
        common.save_run_config(vars(args) | {"data": str(data_dir), "sample_rate": rate, "device": device}, out)
    meter = Throughput(target_samples, warmup_steps=min(5, args.max_steps - 1))
    trainer = common.trainer_from_args(
        args, out, device, checkpoint_every=args.checkpoint_every or max(50, args.max_steps // 4), callbacks=[meter]
    )
    trainer.fit(module, datamodule=data, ckpt_path=common.resume_checkpoint(out, args.resume))
    if not trainer.is_global_zero:
        return None  # rank 0 exports the model and prints the result
    weights = common.export_model(model, payload, out)
    plot = common.plot_metrics(out)

    model.eval()
    valid = data.full_loader("valid")  # every valid file, not just rank 0's shard
    valid_bpb, n_valid = bits_per_sample(model.to(device), valid)
    targets = torch.cat([t for _, t in valid])
    return {
        "command": "pretrain",
        "valid_bpb": round(valid_bpb, 4),
        "valid_unigram_entropy_bits": round(unigram_entropy_bits(targets), 4),
        "valid_samples": n_valid,
        "train_files": len(data.splits["train"].files),
        "valid_files": len(data.splits["valid"].files),
        "split_method": split_method(data_dir),
        "quantization": args.quantization,
        "skipped_files": data.summary.n_skipped,
        "sample_rate_hz": rate,
        "length_samples": args.length,
        "n_params": sum(p.numel() for p in model.parameters()),
        "steps": trainer.global_step,
        "train_tokens_per_s": None if meter.tokens_per_s is None else round(meter.tokens_per_s, 1),
        "wall_s": round(time.perf_counter() - start, 1),
        "checkpoint": str(weights),
        "last_ckpt": str(out / "last.ckpt"),
        "metrics_png": str(plot) if plot else None,
        **(data.packing_stats or {}),  # with --pack: padding_fraction packed and unpacked
        **common.process_info(trainer),
    }


def bpb(args) -> dict:
    from torch.utils.data import DataLoader

    from mamba_audio.datasets import AudioWindows, folder_splits, split_method, unigram_entropy_bits
    from mamba_audio.generation import bits_per_sample, bits_per_sample_by_context
    from mamba_audio.io import ReadSummary, list_audio_files
    from pipelines import common

    device = common.resolve_device(args.device)
    model, info = _load(args.checkpoint, device)
    rate = int(info["sample_rate_hz"])
    length = args.length or int(info["length_samples"])
    mode = args.mode or info.get("mode", "clips")
    quantization = _quantization(info, args.checkpoint)
    total_pool = model.config.total_pool
    for value in [length] + (args.lengths or []):
        if value % total_pool:
            raise AudioDatasetError(f"length {value} must be a multiple of the total pooling factor {total_pool}")
    if args.lengths and not args.out:
        raise ValueError("--lengths writes a plot: pass --out DIR")
    if args.lengths and max(args.lengths) > length:
        raise AudioDatasetError(f"--lengths {max(args.lengths)} is longer than the examples (--length {length})")
    data_dir = _data_dir(args.data)
    summary = ReadSummary()
    if args.split == "all":
        dataset = AudioWindows(list_audio_files(data_dir), rate, length, mode, summary, quantization)
    else:
        splits = folder_splits(data_dir, rate, length, mode, seed=args.seed, summary=summary, quantization=quantization)
        dataset = splits[args.split]
    if len(dataset) == 0:
        raise AudioDatasetError(f"no readable audio in {data_dir} (split {args.split})")
    batches = list(DataLoader(dataset, batch_size=args.batch_size))
    value, n = bits_per_sample(model, batches)
    result = {
        "command": "bpb",
        "bpb": round(value, 4),
        "unigram_entropy_bits": round(unigram_entropy_bits(torch.cat([t for _, t in batches])), 4),
        "n_samples": n,
        "n_files": len(dataset.files),
        "skipped_files": summary.n_skipped,
        "split": args.split,
        "split_method": "all" if args.split == "all" else split_method(data_dir),
        "quantization": quantization,
        "sample_rate_hz": rate,
        "length_samples": length,
    }
    if args.lengths:
        by_length = bits_per_sample_by_context(model, batches, sorted(args.lengths))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        result["bpb_by_length"] = {str(k): round(v, 4) for k, v in by_length.items()}
        result["plot"] = str(_plot_bpb(by_length, rate, out / "bpb_vs_length.png"))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bpb.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _plot_bpb(by_length: dict[int, float], rate: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.common import atomic_path

    xs = sorted(by_length)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(xs, [by_length[x] for x in xs], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"context length (samples at {rate} Hz)")
    ax.set_ylabel("bits per sample")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def generate(args) -> dict:
    from mamba_audio import io
    from mamba_audio.generation import timed_generate
    from pipelines import common

    if args.num < 1:
        raise ValueError(f"--num must be >= 1; got {args.num}")
    if not args.seconds > 0:
        raise ValueError(f"--seconds must be > 0; got {args.seconds}")
    device = common.resolve_device(args.device)
    model, info = _load(args.checkpoint, device)
    rate = int(info["sample_rate_hz"])
    quantizer = quantize.quantizer(_quantization(info, args.checkpoint))  # decode as the model was trained
    length = int(round(args.seconds * rate))
    prompt = None
    if args.prompt:
        prompt = quantizer.encode(torch.from_numpy(io.read(args.prompt, rate)))
    batch = args.batch_size or args.num
    common.seed_everything(args.seed)
    # on CUDA the default generator, seeded above, lets the draw be replayed inside the decoding
    # graph (a torch.Generator object cannot be captured); on CPU an explicit one
    generator = None if device == "cuda" else torch.Generator(device=device).manual_seed(args.seed)
    clips, wall_s = [], 0.0
    for first in range(0, args.num, batch):
        tokens, seconds = timed_generate(
            model,
            min(batch, args.num - first),
            length,
            temperature=args.temperature,
            top_p=args.top_p,
            prompt=prompt,
            generator=generator,
        )
        clips.append(quantizer.decode(tokens).cpu().numpy())
        wall_s += seconds
    audio = np.concatenate(clips)
    # write everything into a temporary folder first: a failed run leaves no partial set of files
    out = Path(args.out)
    with common.atomic_path(out) as tmp:
        if out.is_dir():  # keep what the folder already holds
            import shutil

            shutil.copytree(out, tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        names = [f"sample_{i:03d}.wav" for i in range(args.num)]
        for name, clip in zip(names, audio):
            io.write(tmp / name, clip, rate)
    generated_s = args.num * length / rate
    return {
        "command": "generate",
        "files": [str(out / n) for n in names],
        "num": args.num,
        "seconds": length / rate,
        "sample_rate_hz": rate,
        "quantization": info.get("quantization", quantize.DEFAULT),
        "prompt_seconds": 0.0 if prompt is None else round(prompt.shape[0] / rate, 3),
        "wall_s": round(wall_s, 3),
        # real-time factor: compute seconds per second of audio produced (< 1 is faster than real time)
        "rtf": round(wall_s / generated_s, 4),
        # the same for one clip of a batch: seconds to produce `seconds` of every clip in the batch
        "rtf_per_batch": round(wall_s / (math.ceil(args.num / batch) * length / rate), 4),
        "batch_size": batch,
        "temperature": args.temperature,
        "top_p": args.top_p,
    }


def fetch(args) -> dict:
    from mamba_audio.manifests import fetch as fetch_data

    dest = Path(args.dest) if args.dest else None
    created = dest is not None and not dest.exists()
    try:
        result = fetch_data(args.name, dest, timeout=args.timeout)
    except BaseException:
        # a folder this run made and left empty is removed; a partial .part download is kept to resume
        if created and dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        raise
    return {"command": "fetch", **result}


COMMANDS = {"pretrain": pretrain, "bpb": bpb, "generate": generate, "fetch": fetch}


def main(argv: list[str] | None = None) -> int:
    from pipelines.common import run_command

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a bad argument (already reported in one line)
        return int(exit_.code or 0)
    out = getattr(args, "out", None)
    # `bpb` writes into an existing run folder by choice; only pretrain/generate own theirs
    return run_command(
        f"{PROG} {args.command}",
        lambda: COMMANDS[args.command](args),
        out_dir=out if args.command == "pretrain" else None,
    )


if __name__ == "__main__":
    raise SystemExit(main())
