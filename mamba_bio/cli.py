"""`mamba-bio`: pretrain a DNA Mamba, classify sequences, embed records, fetch data sets.

    mamba-bio pretrain --out runs/dna      # bundled real genomes, ~1-2 min on a 2-core CPU

    mamba-bio pretrain [--fasta F --bed BED | --manifest hg38] [--length L] [--max-steps N] [--pack] [--out DIR]
    mamba-bio classify train   [--data species.tsv|table.csv|GB_FOLDER] --length L --max-steps N --out DIR
    mamba-bio classify eval    --checkpoint DIR_OR_FILE --data species.tsv --split test [--windows K]
    mamba-bio classify predict --checkpoint DIR_OR_FILE --fasta F --out predictions.tsv
    mamba-bio embed            --checkpoint DIR_OR_FILE --fasta F --out embeddings.npy|.safetensors
    mamba-bio fetch NAME       [--dest DIR]

Progress and logs go to stderr; the last stdout line is one JSON object. Bad input: exit code 2
and one line on stderr; the output folder is not left half-written.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

from pipelines.common import ArgumentParser, run_command

PROG = "mamba-bio"


# ----------------------------------------------------------------------------- arguments


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _common(p: argparse.ArgumentParser, out_default: str | None) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    if out_default is not None:
        p.add_argument("--out", default=out_default, help=f"run folder (default {out_default})")


def _training(p: argparse.ArgumentParser, max_steps: int, length: int, batch_size: int, lr: float) -> None:
    p.add_argument("--length", type=_positive, default=length, help=f"window length in bp (default {length})")
    p.add_argument("--max-steps", type=_positive, default=max_steps)
    p.add_argument("--batch-size", type=_positive, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--d-model", type=_positive, default=64)
    p.add_argument("--n-layer", type=_positive, default=2)
    p.add_argument("--d-state", type=_positive, default=16)
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "ref", "cpu", "triton"],
        help="selective-scan backend (auto: Triton on GPU, fused kernel on CPU)",
    )
    p.add_argument("--checkpoint-every", type=_positive, default=100, help="steps between last.ckpt saves")
    p.add_argument("--val-every", type=_positive, default=None, help="steps between validations (default: at the end)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.ckpt if it exists")
    p.add_argument("--log-every", type=_positive, default=10, help="steps between metrics.csv rows")
    p.add_argument("--devices", type=_positive, default=1, help="GPUs (or CPU processes) per node")
    p.add_argument("--num-nodes", type=_positive, default=1, help="nodes (under SLURM or torchrun)")
    p.add_argument(
        "--strategy",
        default="auto",
        choices=["auto", "ddp", "fsdp"],
        help="multi-device strategy (auto: DDP when --devices > 1); every rank trains on its own windows",
    )
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Mamba models of DNA: pretrain, classify, embed, fetch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    p = sub.add_parser("pretrain", help="next-token pretraining on FASTA windows")
    p.add_argument("--fasta", action="append", help="FASTA file (repeatable); default: the bundled sample genomes")
    p.add_argument("--bed", help="BED intervals (chrom start end [split]) over the single --fasta")
    p.add_argument("--manifest", help="a data_manifests name (e.g. hg38) to read fasta/bed from")
    p.add_argument("--data-dir", help="where the manifest's files are (default ~/.cache/mamba_bio/data/NAME)")
    p.add_argument("--download", action="store_true", help="fetch the manifest's files first")
    _training(p, max_steps=300, length=1024, batch_size=8, lr=8e-3)
    p.add_argument("--max-shift", type=int, default=0, help="random window shift (bp) in training")
    p.add_argument("--rc-prob", type=float, default=0.0, help="reverse-complement augmentation probability")
    p.add_argument(
        "--seq-warmup-min", type=int, default=0, help="sequence-length warmup: first length (paper: 1024); 0 disables"
    )
    p.add_argument("--seq-warmup-steps", type=int, default=0, help="steps per length stage")
    p.add_argument("--max-val-windows", type=int, default=64)
    p.add_argument(
        "--pack",
        action="store_true",
        help="pack whole records/intervals end to end into rows of --length (seq_idx keeps them apart) "
        "instead of cutting windows: short records are used, not dropped or padded",
    )
    _common(p, "runs/mamba-bio-pretrain")

    pc = sub.add_parser("classify", help="sequence classification: train, eval, predict")
    csub = pc.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    t = csub.add_parser("train", help="train a classifier")
    t.add_argument(
        "--data",
        help="species.tsv, a CSV/TSV of sequence,label[,split], or a Genomic Benchmarks "
        "folder (default: the bundled bacteria species.tsv)",
    )
    _training(t, max_steps=200, length=512, batch_size=16, lr=2e-3)
    t.add_argument("--pooling", default="mean", choices=["mean", "last"])
    t.add_argument("--bidirectional", action="store_true", help="BiMamba layers (Caduceus)")
    t.add_argument("--rc-equivariant", action="store_true", help="reverse-complement equivariant backbone")
    t.add_argument("--rc-prob", type=float, default=0.0, help="reverse-complement augmentation probability")
    t.add_argument("--init-from", help="a `pretrain` run folder whose backbone initialises the classifier")
    t.add_argument("--windows", type=_positive, default=64, help="validation windows per species")
    _common(t, "runs/mamba-bio-classify")

    e = csub.add_parser("eval", help="accuracy of a trained classifier on one split")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test")
    e.add_argument("--windows", type=_positive, default=64, help="fixed windows per species (species tables)")
    e.add_argument("--batch-size", type=_positive, default=32)
    _common(e, None)

    pr = csub.add_parser("predict", help="per-window and per-record predictions for a FASTA")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--fasta", required=True)
    pr.add_argument("--out", required=True, help="TSV file to write")
    pr.add_argument("--stride", type=_positive, default=None, help="bp between windows (default: the window length)")
    pr.add_argument("--batch-size", type=_positive, default=32)
    pr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    em = sub.add_parser("embed", help="per-record embeddings, streamed through long records")
    em.add_argument("--checkpoint", required=True, help="a pretrain (or causal classify) run")
    em.add_argument("--fasta", required=True)
    em.add_argument("--out", required=True, help=".npy (matrix + .records.tsv beside it) or .safetensors")
    em.add_argument("--chunk", type=_positive, default=65536, help="bp per streamed chunk")
    em.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    f = sub.add_parser("fetch", help="download a data set named in data_manifests/ and verify it")
    f.add_argument("name")
    f.add_argument("--dest", help="folder (default ~/.cache/mamba_bio/data/NAME)")
    f.add_argument("--timeout", type=float, default=60.0)
    return parser


# ----------------------------------------------------------------------------- commands


def _backbone_config(args, vocab_size: int):
    from core.models import MambaConfig

    return MambaConfig(
        d_model=args.d_model, n_layer=args.n_layer, vocab_size=vocab_size, d_state=args.d_state, backend=args.backend
    )


def _finish_training(trainer, module, model, config, out: Path, args, extra: dict) -> dict:
    from pipelines.common import export_model, plot_metrics, process_info

    export_model(model, config, out, extra=extra)
    plot = plot_metrics(out)
    return {
        "out": str(out),
        "checkpoint": str(out / "last.ckpt"),
        "model": str(out / "model.safetensors"),
        "plot": str(plot) if plot else None,
        "steps": trainer.global_step,
        **process_info(trainer),
    }


def cmd_pretrain(args) -> dict:
    import torch

    from core.models import MambaLM
    from pipelines.common import (
        is_global_zero,
        resolve_device,
        resume_checkpoint,
        save_run_config,
        seed_everything,
        trainer_from_args,
    )
    from pipelines.genome_data import GenomeDataModule
    from pipelines.lm import LMModule
    from pipelines.throughput import Throughput

    from .tokenizer import VOCAB_SIZE

    device = resolve_device(args.device)
    seed_everything(args.seed)
    data = GenomeDataModule(
        fasta=args.fasta,
        bed=args.bed,
        manifest=args.manifest,
        data_dir=args.data_dir,
        download=args.download,
        length=args.length,
        batch_size=args.batch_size,
        max_shift=args.max_shift,
        rc_prob=args.rc_prob,
        max_val_windows=args.max_val_windows,
        num_workers=args.num_workers,
        seed=args.seed,
        pack=args.pack,
    )
    data.prepare_data()
    data.setup("fit")  # all input errors surface here, before anything is written
    config = _backbone_config(args, VOCAB_SIZE)
    model = MambaLM(config)
    module = LMModule(
        model,
        lr=args.lr,
        max_steps=args.max_steps,
        seq_warmup_min=args.seq_warmup_min,
        seq_warmup_steps=args.seq_warmup_steps,
    )
    out = Path(args.out)
    # windows (B, L), or packed rows [ids, seq_idx]: every position is a token of the step. The
    # warm-up covers the first epoch: its last, smaller batch builds kernels for a shape of its own
    ranks = args.devices * args.num_nodes
    epoch_steps = math.ceil(math.ceil(len(data.train_set) / ranks) / args.batch_size)
    meter = Throughput(
        lambda b: (b if isinstance(b, torch.Tensor) else b[0]).numel(), min(max(5, epoch_steps + 1), args.max_steps - 1)
    )
    trainer = trainer_from_args(args, out, device, callbacks=[meter])
    if is_global_zero():  # one writer; the other ranks run the same command line
        save_run_config(
            {
                "command": "pretrain",
                **vars(args),
                "device": device,
                "model": asdict(config),
                "train_windows": len(data.train_set),
                "val_windows": len(data.val_set),
                **(data.packing_stats or {}),
            },
            out,
        )
    start = time.time()
    trainer.fit(module, datamodule=data, ckpt_path=resume_checkpoint(out, args.resume))
    seconds = time.time() - start
    if not trainer.is_global_zero:
        return None  # rank 0 exports the model and prints the result
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor)}
    result = _finish_training(trainer, module, model, config, out, args, {"task": "lm", "length": args.length})
    tokens = trainer.global_step * args.batch_size * args.length * trainer.world_size  # every rank's windows
    return {
        "command": "pretrain",
        "val_ppl": metrics.get("val/ppl"),
        "val_loss": metrics.get("val/loss"),
        **result,
        "train_windows": len(data.train_set),
        "val_windows": len(data.val_set),
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),  # of the whole fit, setup and validation included
        # training steps only, after the first epoch (at least 5 steps), all ranks
        "train_tokens_per_s": None if meter.tokens_per_s is None else round(meter.tokens_per_s * trainer.world_size, 1),
        "device": device,
        **(data.packing_stats or {}),  # with --pack: padding_fraction packed and unpacked
    }


def cmd_classify_train(args) -> dict:
    import torch

    from pipelines.classify import ClassifierModule
    from pipelines.common import (
        is_global_zero,
        resolve_device,
        resume_checkpoint,
        save_run_config,
        seed_everything,
        trainer_from_args,
    )
    from pipelines.genome_data import ClassificationDataModule, sample_species_table

    from .checkpoints import load_run
    from .models import ClassifierConfig, DNAClassifier
    from .tokenizer import VOCAB_SIZE

    device = resolve_device(args.device)
    seed_everything(args.seed)
    data_path = args.data or str(sample_species_table())
    data = ClassificationDataModule(
        data_path,
        length=args.length,
        batch_size=args.batch_size,
        train_samples=args.max_steps * args.batch_size,
        eval_windows=args.windows,
        rc_prob=args.rc_prob,
        num_workers=args.num_workers,
        seed=args.seed,
    )
    data.setup("fit")
    config = ClassifierConfig(
        _backbone_config(args, VOCAB_SIZE),
        num_classes=len(data.labels),
        pooling=args.pooling,
        bidirectional=args.bidirectional,
        rc_equivariant=args.rc_equivariant,
    )
    model = DNAClassifier(config)
    if args.init_from:
        _, lm, _ = load_run(args.init_from, task="lm")
        model.load_backbone_from_lm(lm.state_dict())
    module = ClassifierModule(model, lr=args.lr, max_steps=args.max_steps)
    out = Path(args.out)
    has_val = data.val_set is not None
    trainer = trainer_from_args(
        args, out, device, val_every=args.val_every if has_val else None, limit_val_batches=1.0 if has_val else 0
    )
    if is_global_zero():  # one writer; the other ranks run the same command line
        save_run_config(
            {
                "command": "classify train",
                **vars(args),
                "data": data_path,
                "device": device,
                "labels": data.labels,
                "model": config.to_dict(),
            },
            out,
        )
    start = time.time()
    trainer.fit(module, datamodule=data, ckpt_path=resume_checkpoint(out, args.resume))
    if not trainer.is_global_zero:
        return None  # rank 0 exports the model and prints the result
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, torch.Tensor)}
    extra = {"task": "classify", "labels": data.labels, "length": args.length}
    result = _finish_training(trainer, module, model, config.to_dict(), out, args, extra)
    return {
        "command": "classify train",
        "val_accuracy": metrics.get("val/acc"),
        "val_loss": metrics.get("val/loss"),
        "labels": data.labels,
        **result,
        "seconds": round(time.time() - start, 1),
        "device": device,
    }


def cmd_classify_eval(args) -> dict:
    import torch

    from pipelines.common import resolve_device

    from .checkpoints import load_run
    from .errors import TableError
    from .labelled import check_split_name, collate_classification, open_classification_data

    split = check_split_name(args.split)
    device = resolve_device(args.device)
    _, model, config = load_run(args.checkpoint, task="classify")
    source = open_classification_data(args.data, config["length"], args.seed)
    unknown = [label for label in source.labels if label not in config["labels"]]
    if unknown:
        raise TableError(f"{args.data}: labels {unknown} were not seen in training (model knows {config['labels']})")
    dataset = source.eval_dataset(split, args.windows, args.seed + 2)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate_classification)
    model.to(device)
    to_model = torch.tensor([config["labels"].index(label) for label in source.labels])
    correct = torch.zeros(len(source.labels))
    count = torch.zeros(len(source.labels))
    with torch.inference_mode():
        for batch in loader:
            pred = model(batch["input_ids"].to(device), batch["lengths"].to(device)).argmax(-1).cpu()
            labels = batch["labels"]
            hit = (pred == to_model[labels]).float()
            correct.index_add_(0, labels, hit)
            count.index_add_(0, labels, torch.ones_like(hit))
    per = {
        label: {"accuracy": round(float(correct[i] / count[i]), 4), "n": int(count[i])}
        for i, label in enumerate(source.labels)
        if count[i] > 0
    }
    n = int(count.sum())
    return {
        "command": "classify eval",
        "accuracy": round(float(correct.sum() / max(n, 1)), 4),
        "n": n,
        "per_species": per,
        "split": split,
        "checkpoint": str(args.checkpoint),
    }


def cmd_classify_predict(args) -> dict:
    from pipelines.common import atomic_path, resolve_device

    from .checkpoints import load_run
    from .fasta import Genome
    from .inference import predict_windows

    device = resolve_device(args.device)
    _, model, config = load_run(args.checkpoint, task="classify")
    genome = Genome(args.fasta)
    length, labels = config["length"], config["labels"]
    model.to(device)
    per_record: dict[str, list] = {}
    out = Path(args.out)
    header = ["record", "start", "end", "kind", "predicted"] + [f"p_{label}" for label in labels]
    n_windows = 0
    with atomic_path(out) as tmp, open(tmp, "w") as fh:
        fh.write("\t".join(header) + "\n")
        for record, start, end, probs in predict_windows(
            model, genome, length, args.stride or length, args.batch_size, device
        ):
            per_record.setdefault(record, []).append(probs)
            n_windows += 1
            fh.write(
                "\t".join(
                    [record, str(start), str(end), "window", labels[int(probs.argmax())]] + [f"{p:.4f}" for p in probs]
                )
                + "\n"
            )
        summary = {}
        for record, rows in per_record.items():  # a record's call: its windows' mean probabilities
            mean = sum(rows) / len(rows)
            summary[record] = labels[int(mean.argmax())]
            fh.write(
                "\t".join(
                    [record, "0", str(genome.sizes[record]), "record", summary[record]] + [f"{p:.4f}" for p in mean]
                )
                + "\n"
            )
    result = {
        "command": "classify predict",
        "predictions": str(out),
        "records": len(per_record),
        "windows": n_windows,
        "skipped_records": len(genome.sizes) - len(per_record),
    }
    if len(summary) <= 50:
        result["per_record"] = summary
    return result


def cmd_embed(args) -> dict:
    import numpy as np

    from pipelines.common import atomic_path, resolve_device

    from .checkpoints import load_run
    from .errors import CheckpointError
    from .fasta import Genome
    from .inference import embed_records

    device = resolve_device(args.device)
    task, model, config = load_run(args.checkpoint)
    if task == "classify" and (config.get("bidirectional") or config.get("rc_equivariant")):
        raise CheckpointError(
            f"{args.checkpoint}: bidirectional/RC classifiers see the whole sequence at once and "
            "cannot stream; embed with a pretrain run or a causal classifier"
        )
    backbone = model.backbone.to(device)
    out = Path(args.out)
    if out.suffix not in (".npy", ".safetensors"):
        raise ValueError(f"--out {out}: use a .npy or .safetensors file name")
    genome = Genome(args.fasta)
    embeddings = embed_records(backbone, genome, args.chunk, device)
    names = list(embeddings)
    if out.suffix == ".npy":
        matrix = np.stack([embeddings[n] for n in names]).astype(np.float32)
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, matrix)
        index = out.with_suffix(".records.tsv")
        with atomic_path(index) as tmp:
            rows = "".join(f"{i}\t{n}\t{genome.sizes[n]}\n" for i, n in enumerate(names))
            tmp.write_text("row\trecord\tlength\n" + rows)
    else:
        import torch
        from safetensors.torch import save_file

        with atomic_path(out) as tmp:
            save_file({n: torch.from_numpy(embeddings[n].astype(np.float32)) for n in names}, str(tmp))
    dim = int(next(iter(embeddings.values())).shape[0])
    return {"command": "embed", "embeddings": str(out), "records": len(names), "dim": dim, "chunk": args.chunk}


def cmd_fetch(args) -> dict:
    from .manifests import fetch

    return {"command": "fetch", **fetch(args.name, args.dest, timeout=args.timeout)}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a bad argument (already reported in one line)
        return int(exit_.code or 0)
    if args.command == "pretrain":
        command, out = cmd_pretrain, args.out
    elif args.command == "classify":
        command = {"train": cmd_classify_train, "eval": cmd_classify_eval, "predict": cmd_classify_predict}[args.action]
        out = args.out if args.action == "train" else None
    elif args.command == "embed":
        command, out = cmd_embed, None
    else:
        command, out = cmd_fetch, None
    return run_command(PROG, lambda: command(args), out_dir=out)


if __name__ == "__main__":
    sys.exit(main())
