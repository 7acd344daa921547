"""Trainer set-up and run plumbing shared by the `mamba-bio` and `mamba-audio` CLIs.

    device = resolve_device(args.device)              # "auto" -> "cuda" if present, else "cpu"
    trainer = build_trainer(out_dir, device, max_steps=200, checkpoint_every=100)
    trainer.fit(module, datamodule, ckpt_path=resume_checkpoint(out_dir, args.resume))
    export_model(module.model, config, out_dir)        # model.safetensors + config.json
    plot_metrics(out_dir)                              # metrics.csv -> metrics.png

A CLI's `main(argv=None)` hands its work to `run_command`, which keeps stdout clean (everything
printed while the command runs goes to stderr), prints the result dict as the last stdout line,
and turns bad input into exit code 2 with one line on stderr, removing an output folder the
failed run created. Files are written to a temporary name and renamed, so a reader never sees
half a file.

Everything here is domain-free and its signatures are stable: both CLIs import them.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = [
    "USER_ERRORS",
    "ResumableSampler",
    "ResumeError",
    "pass_epoch_to_dataset",
    "ArgumentParser",
    "atomic_path",
    "build_trainer",
    "process_info",
    "trainer_from_args",
    "translate_position",
    "emit_result",
    "is_global_zero",
    "export_model",
    "load_exported",
    "plot_metrics",
    "precision_for",
    "resolve_device",
    "resumable_loader",
    "resume_checkpoint",
    "run_command",
    "save_run_config",
    "seed_everything",
]

# Exceptions that mean "the user gave bad input": each domain's errors.py subclasses one of these
# (pyfaidx's errors do too), so the CLI wrapper reports them in one line instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, LookupError)


class ResumeError(ValueError):
    """Raised if `--resume` finds a `last.ckpt` that is truncated, corrupt or not a training checkpoint."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and exit code 2, like every other bad input."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


# ----------------------------------------------------------------------------- devices, seeds


def resolve_device(device: str) -> str:
    """Map --device auto|cpu|cuda to "cpu" or "cuda"; asking for CUDA without a GPU is bad input."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {device!r}: choose auto, cpu or cuda")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto")
    return device


def precision_for(device: str) -> str:
    """bf16 autocast on GPU (the scan itself runs in fp32 inside the kernels); plain fp32 on CPU,
    where bf16 matmuls are slower than fp32 on most cores."""
    return "bf16-mixed" if device == "cuda" else "32-true"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (and dataloader workers) for a reproducible run."""
    import lightning.pytorch as pl

    pl.seed_everything(seed, workers=True, verbose=False)


# ----------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on error delete it.

    Works for files and folders: whatever the body creates at the yielded path replaces `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # the body decides whether it is a file or a folder
    try:
        yield tmp
        if tmp.is_file():
            # flush to disk before the rename: after a node crash the new name must not point at
            # a file whose blocks never left the page cache
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ----------------------------------------------------------------------------- trainer


def pass_epoch_to_dataset(module) -> None:
    """Seeded augmentation draws depend on (seed, epoch, index): hand the training dataset the epoch."""
    dataset = getattr(module.trainer.train_dataloader, "dataset", None)
    if hasattr(dataset, "epoch"):
        dataset.epoch = module.current_epoch


class ResumableSampler(torch.utils.data.Sampler):
    """Dataset indices in an order fixed by (seed, epoch), sharded across ranks, restartable mid-epoch.

    - Order: epoch e is a permutation drawn from a generator seeded with (seed, e) alone, never
      from the global RNG, so a resumed or re-launched run sees exactly the same order.
    - Ranks: rank r takes positions r, r + W, r + 2W, ... of the epoch's order, so no index is
      seen by two ranks. With `even` (training) the order is first cut to a multiple of
      `world_size`, so every rank has the same number of batches (DDP hangs when one rank runs
      out first); at most W - 1 items per epoch are left out, different ones each epoch when
      shuffling. Without it (evaluation) every item is seen exactly once and the ranks' shards
      differ by at most one item: metrics must then be summed over ranks, never averaged per rank,
      and an evaluation step must run no collective (DDP's buffer broadcast would be one; these
      models have no buffers). A rank left without items (fewer items than ranks) still reports
      a length of one and yields nothing: Lightning refuses a loader that is empty on some ranks
      only, and its evaluation loop ends when the loader does.
    - Resume: `set_position(epoch, batches)` makes that epoch start after its first `batches`
      batches of `batch_size`; later epochs start at their beginning.

    Lightning calls `set_epoch` at every epoch start (for samplers on `DataLoader.sampler`).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        even: bool = True,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.num_items, self.batch_size, self.seed, self.shuffle = num_items, batch_size, seed, shuffle
        self.rank, self.world_size, self.even = rank, world_size, even
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_position(self, epoch: int, batches: int) -> None:
        self.epoch, self._resume = epoch, (epoch, batches)

    def _order(self) -> list[int]:
        if self.shuffle:
            import numpy as np

            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.num_items).tolist()
        else:
            order = list(range(self.num_items))
        usable = len(order) - len(order) % self.world_size if self.even else len(order)
        return order[self.rank : usable : self.world_size]

    def __iter__(self):
        order = self._order()
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1] * self.batch_size :]
        return iter(order)

    def __len__(self) -> int:
        # the full epoch, also on a resumed one: Lightning counts the epoch's batches from its start
        if self.even:
            return self.num_items // self.world_size
        return max(1, len(range(self.rank, self.num_items, self.world_size)))


def resumable_loader(
    dataset,
    batch_size: int,
    seed: int,
    shuffle: bool,
    trainer=None,
    position: tuple[int, int] | None = None,
    even: bool = True,
    **loader_kwargs,
) -> torch.utils.data.DataLoader:
    """A DataLoader over a `ResumableSampler` for this process's rank (from `trainer`, else rank 0 of 1).

    `position` (epoch, batches), from a resumed checkpoint, skips the batches already trained.
    `even`: equal shards per rank (training); False for validation and test loaders, so every
    item is scored exactly once (see `ResumableSampler`).
    `loader_kwargs` go to the DataLoader (num_workers, collate_fn, ...).
    """
    rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    sampler = ResumableSampler(len(dataset), batch_size, seed, shuffle, rank, world_size, even)
    if position is not None:
        sampler.set_position(*position)
    # no persistent workers: each epoch's workers must get a fresh copy of the dataset, whose
    # `epoch` (seeding the augmentation, see `pass_epoch_to_dataset`) has just been updated
    loader_kwargs.setdefault("persistent_workers", False)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, **loader_kwargs)


def _check_checkpoint(path: Path) -> None:
    """ResumeError unless `path` is a complete Lightning training checkpoint.

    torch.save writes a zip archive: a file cut short loses the central directory at its end,
    and flipped bits fail a member's CRC, so both are caught before Lightning sees the file.
    Loading with weights_only=True then proves it unpickles without running code.
    """
    import zipfile

    fix = f"delete {path} to start from scratch, or restore it from a copy"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ResumeError(f"{path}: truncated or corrupt checkpoint ({err}); {fix}") from err
    if bad is not None:
        raise ResumeError(f"{path}: corrupt checkpoint (bad CRC in {bad}); {fix}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises RuntimeError/UnpicklingError/EOFError for damaged files
        raise ResumeError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err}); {fix}") from err
    missing = [
        k for k in ("state_dict", "global_step", "loops") if not isinstance(checkpoint, dict) or k not in checkpoint
    ]
    if missing:
        raise ResumeError(f"{path}: not a training checkpoint (no {', '.join(missing)}); {fix}")


def resume_checkpoint(out_dir: str | os.PathLike, resume: bool) -> str | None:
    """`out_dir/last.ckpt` when resuming and it exists, else None (a fresh run).

    A `last.ckpt` that is truncated or corrupt raises ResumeError: resuming must never quietly
    turn into training from scratch. Without a `last.ckpt` (the run died before its first save)
    the run starts from scratch and says so on stderr.
    """
    last = Path(out_dir) / "last.ckpt"
    if not resume:
        return None
    for stale in Path(out_dir).glob(".last.ckpt.*.tmp"):  # a save cut short by the kill
        stale.unlink(missing_ok=True)
    if not last.exists():
        print(f"--resume: no {last} yet; starting from scratch", file=sys.stderr)
        return None
    _check_checkpoint(last)
    return str(last)


def _rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors and lists (loadable with weights_only=True)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "gauss": [has_gauss, gauss],
        },
        "python": [version, list(py_state), py_gauss],
    }


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], *n["gauss"]))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def translate_position(batches: int, saved_world_size: int, world_size: int) -> int:
    """Batches per rank trained in an epoch by `saved_world_size` ranks -> the same position for `world_size`.

    Rank r of W takes positions r, r + W, ... of the epoch's order (`ResumableSampler`), so after
    b batches of size B on each rank, W ranks have trained exactly the first b * B * W positions,
    whatever W is: the same prefix is b * W / W' batches on each of W' ranks. When that is not a
    whole batch it is rounded down, so at most W' * B - 1 examples are trained a second time.
    """
    return batches * saved_world_size // world_size


def _make_save_last_callback(every_n_steps: int):
    import lightning.pytorch as pl

    class SaveLast(pl.Callback):
        """Write `last.ckpt` every `every_n_steps` optimiser steps and when training ends.

        Written to a temporary name, flushed and renamed, so a crash mid-write never leaves a
        broken `last.ckpt` for `--resume` to trip over. The checkpoint also carries what Lightning
        does not save and an exact resume needs: the data position (epoch, batches trained in
        it) and the python/numpy/torch RNG states. On load, the position goes to the datamodule's
        `resume_from(epoch, batches)` (which builds its training loader to skip those batches)
        and the RNG states are put back just before the first resumed batch.

        The checkpoint loads on any number of devices: it records the world size that wrote it,
        and a run with another world size continues at the same point of the epoch's order (see
        `translate_position`), with Lightning's in-epoch batch counters moved to match.
        """

        def __init__(self, dirpath: Path, every: int):
            self.dirpath, self.every = dirpath, max(1, every)
            self._saved_at = -1
            self._position = (0, 0)
            self._rng_to_restore: dict | None = None

        def _save(self, trainer: pl.Trainer) -> None:
            if trainer.global_step == self._saved_at:
                return
            target = self.dirpath / "last.ckpt"
            # every rank must call save_checkpoint (FSDP gathers shards in it); the strategy
            # writes only on global rank 0, so only rank 0 renames
            if trainer.is_global_zero:
                with atomic_path(target) as tmp:
                    trainer.save_checkpoint(tmp, weights_only=False)  # full state: optimiser, loops, callbacks
            else:
                trainer.save_checkpoint(target, weights_only=False)
            self._saved_at = trainer.global_step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._position = (trainer.current_epoch, batch_idx + 1)
            if trainer.global_step > 0 and trainer.global_step % self.every == 0:
                self._save(trainer)

        def on_train_end(self, trainer, pl_module):
            self._save(trainer)

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            epoch, batches = self._position
            checkpoint["resume"] = {
                "epoch": epoch,
                "batches": batches,
                "world_size": trainer.world_size,
                "rng": _rng_state(),
            }

        def on_load_checkpoint(self, trainer, pl_module, checkpoint):
            resume = checkpoint.get("resume")
            if resume is None:
                raise ResumeError(
                    f"{trainer.ckpt_path}: no data position or RNG state (written by an older version), so "
                    "the run cannot continue exactly; start a new run in another --out folder"
                )
            resume_from = getattr(trainer.datamodule, "resume_from", None)
            if resume_from is None:  # a datamodule without it would silently replay its epoch from the start
                raise ResumeError(f"{type(trainer.datamodule).__name__} has no resume_from(epoch, batches)")
            saved_batches, saved_world_size = resume["batches"], resume.get("world_size", trainer.world_size)
            batches = translate_position(saved_batches, saved_world_size, trainer.world_size)
            if batches != saved_batches:
                # Lightning counts the epoch's batches itself (epoch end, the batch_idx of hooks):
                # move its in-epoch counters by the same amount. The totals stay: with one batch per
                # step they equal global_step, which places validation.
                current = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
                for key in current:
                    current[key] += batches - saved_batches
            resume_from(resume["epoch"], batches)
            self._position = (resume["epoch"], batches)
            self._rng_to_restore = resume["rng"]

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self._rng_to_restore is not None:
                _set_rng_state(self._rng_to_restore)
                self._rng_to_restore = None

    return SaveLast


STRATEGIES = ("auto", "ddp", "fsdp")


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases, embeddings' ties or `_no_weight_decay` params."""
    decay, no_decay, seen = [], [], set()
    for name, param in model.named_parameters():
        if id(param) in seen or not param.requires_grad:
            continue
        seen.add(id(param))
        if param.dim() < 2 or getattr(param, "_no_weight_decay", False) or name.endswith("bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def is_global_zero() -> bool:
    """True in the process that writes the run's files: global rank 0 as the launcher set it in the
    environment (Lightning's launcher and torchrun set RANK or LOCAL_RANK, SLURM sets SLURM_PROCID),
    or the only process."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _strategy(name: str, device: str):
    """--strategy -> a Lightning strategy. DDP talks over NCCL on GPUs and gloo on CPUs (Lightning's
    default per accelerator); FSDP gathers the full state dict on rank 0 for checkpoints, so
    `last.ckpt` loads on any number of devices."""
    if name not in STRATEGIES:
        raise ValueError(f"--strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    if name == "fsdp":
        if device != "cuda":
            raise ValueError("--strategy fsdp needs --device cuda (FSDP shards parameters across GPUs); use ddp on CPU")
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(state_dict_type="full")
    return name


def _check_launched_processes(devices: int, num_nodes: int) -> None:
    """ValueError when torchrun or srun started a number of processes other than devices x nodes.

    Lightning checks this itself only for multi-device strategies; with `--devices 1` each of the
    launched processes would otherwise train its own copy of the model into the same --out folder.
    """
    from lightning.fabric.plugins.environments.slurm import _is_srun_used

    if torch.distributed.is_available() and torch.distributed.is_torchelastic_launched():
        launched, launcher, fix = int(os.environ.get("WORLD_SIZE", "1")), "torchrun", "--nproc_per_node and --nnodes"
    elif _is_srun_used():
        launched, launcher, fix = int(os.environ["SLURM_NTASKS"]), "SLURM", "--ntasks-per-node and --nodes"
    else:
        return
    if launched != devices * num_nodes:
        raise ValueError(
            f"{launcher} started {launched} processes but --devices {devices} x --num-nodes {num_nodes} = "
            f"{devices * num_nodes}; pass --devices (processes per node) and --num-nodes to match {fix}"
        )


def build_trainer(
    out_dir: str | os.PathLike,
    device: str,
    max_steps: int,
    checkpoint_every: int = 500,
    val_every: int | None = None,
    limit_val_batches: int | float = 1.0,
    log_every: int = 10,
    grad_clip: float | None = 1.0,
    accumulate_grad_batches: int = 1,
    progress: bool = True,
    callbacks: list | None = None,
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
):
    """A Lightning Trainer writing everything into `out_dir`.

    - `device`: "cpu" or "cuda" (from `resolve_device`); bf16 autocast on GPU, fp32 on CPU.
    - `max_steps` optimiser steps; validation every `val_every` steps (default: once, at the end),
      counted in steps rather than epochs so map-style and endless datasets behave alike.
    - `out_dir/last.ckpt` every `checkpoint_every` steps and at the end (resume with
      `trainer.fit(..., ckpt_path=resume_checkpoint(out_dir, True))`).
    - `out_dir/metrics.csv` (CSVLogger) and, when `tensorboard` is installed, `out_dir/tensorboard/`.
    - Progress bar on stderr (`run_command` sends stdout to stderr while the command runs).
    - `devices` per node, `num_nodes`, `strategy` ("auto", "ddp" or "fsdp"): Lightning's own
      strategies launch and connect the processes (its launcher re-runs the command once per extra
      device; under torchrun or SLURM it joins the processes those started). Only global rank 0
      writes metrics and checkpoints; see `is_global_zero` for the files a CLI writes itself.
    """
    import warnings

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    # Lightning only knows stateful DataLoaders; our loaders restart mid-epoch through SaveLast
    # and ResumableSampler instead, so its warning that they cannot would be wrong.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    _check_launched_processes(devices, num_nodes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = out_dir / "metrics.csv"
    if previous.is_file() and is_global_zero():  # other ranks must not move rank 0's fresh metrics
        # CSVLogger deletes an existing metrics.csv; keep a resumed run's earlier curves beside it
        n = len(list(out_dir.glob("metrics.part*.csv")))
        os.replace(previous, out_dir / f"metrics.part{n}.csv")
    # name="" and version="" put metrics.csv and hparams.yaml directly in out_dir.
    loggers: list = [CSVLogger(save_dir=str(out_dir), name="", version="")]
    if importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(out_dir), name="tensorboard", version=""))

    save_last = _make_save_last_callback(checkpoint_every)(out_dir, checkpoint_every)
    all_callbacks = [save_last, LearningRateMonitor(logging_interval="step")]
    if progress:
        all_callbacks.append(TQDMProgressBar(refresh_rate=max(1, log_every)))
    all_callbacks += callbacks or []

    val_every = max_steps if val_every is None else min(val_every, max_steps)
    return pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=devices,
        num_nodes=num_nodes,
        strategy=_strategy(strategy, device),
        precision=precision_for(device),
        max_steps=max_steps,
        max_epochs=-1,
        val_check_interval=max(1, val_every),
        check_val_every_n_epoch=None,
        limit_val_batches=limit_val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, log_every),
        gradient_clip_val=grad_clip,
        accumulate_grad_batches=accumulate_grad_batches,
        logger=loggers,
        callbacks=all_callbacks,
        enable_checkpointing=False,  # SaveLast above owns last.ckpt
        # training loaders shard themselves with ResumableSampler (exact resume needs an order
        # Lightning's DistributedSampler wrapper cannot restart mid-epoch)
        use_distributed_sampler=False,
        enable_progress_bar=progress,
        enable_model_summary=True,
        default_root_dir=str(out_dir),
    )


def process_info(trainer) -> dict:
    """What a training result records about its processes: the world size, the nodes, and the
    cluster environment Lightning picked (LightningEnvironment for its own launcher,
    TorchElasticEnvironment under torchrun, SLURMEnvironment under srun; None on one device)."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return {
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "cluster_environment": type(environment).__name__ if environment is not None else None,
    }


# ----------------------------------------------------------------------------- exports


def trainer_from_args(args: argparse.Namespace, out_dir: str | os.PathLike, device: str, **overrides):
    """`build_trainer` from the flags every training command shares (--max-steps, --checkpoint-every,
    --val-every, --log-every, --no-progress, --devices, --num-nodes, --strategy); `overrides` win."""
    kwargs = {
        "checkpoint_every": args.checkpoint_every,
        "val_every": args.val_every,
        "log_every": args.log_every,
        "progress": not getattr(args, "no_progress", False),
        "devices": args.devices,
        "num_nodes": args.num_nodes,
        "strategy": args.strategy,
    }
    return build_trainer(out_dir, device, args.max_steps, **{**kwargs, **overrides})


def _config_dict(config: Any) -> dict:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, dict):
        return dict(config)
    raise TypeError(f"export_model: config must be a dataclass or dict, got {type(config).__name__}")


def export_model(model: torch.nn.Module, config: Any, out_dir: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write `out_dir/model.safetensors` (the model's state_dict, fp32 on CPU) and `out_dir/config.json`.

    `config` is the model's config dataclass (or a dict); `extra` adds keys to config.json (e.g. the
    task, label names). Tied weights are stored under every name, so `load_state_dict` needs no
    re-tying. Returns the path of the safetensors file.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors sharing storage (tied embedding / lm_head).
    state = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
        for k, v in model.state_dict().items()
    }
    weights = out_dir / "model.safetensors"
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    payload = _config_dict(config)
    if extra:
        payload.update(extra)
    _write_text(out_dir / "config.json", json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return weights


def load_exported(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read an export: `path` is the folder or its model.safetensors. Returns (config dict, state_dict)."""
    from safetensors.torch import load_file

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights = folder / "model.safetensors"
    config_file = folder / "config.json"
    for needed in (weights, config_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed}: not found; pass a run folder written by `pretrain`/`train`")
    return json.loads(config_file.read_text()), load_file(str(weights))


def save_run_config(config: dict, out_dir: str | os.PathLike, name: str = "run_config.yaml") -> Path:
    """Save the resolved run configuration (CLI arguments after defaults) as YAML in the run folder."""
    path = Path(out_dir) / name
    plain = json.loads(json.dumps(config, default=str))  # Paths and other objects -> strings
    _write_text(path, yaml.safe_dump(plain, sort_keys=False))
    return path


def plot_metrics(
    out_dir: str | os.PathLike, csv_name: str = "metrics.csv", png_name: str = "metrics.png"
) -> Path | None:
    """Plot every numeric column of `out_dir/metrics.csv` against `step`, one panel each, to a PNG.

    Curves of earlier runs of a resumed folder (metrics.part*.csv, see `build_trainer`) come first.
    Returns the PNG path, or None when there is nothing to plot (no CSV or no logged values).
    """
    csv_path = Path(out_dir) / csv_name
    if not csv_path.is_file():
        return None
    parts = sorted(Path(out_dir).glob("metrics.part*.csv"), key=lambda p: int(p.stem[len("metrics.part") :]))
    rows: list[dict] = []
    for path in [*parts, csv_path]:
        with open(path, newline="") as fh:
            rows.extend(csv.DictReader(fh))
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        step = row.get("step")
        if not step:
            continue
        for key, value in row.items():
            if key in ("step", "epoch") or value in ("", None):
                continue
            try:
                y = float(value)
            except ValueError:
                continue
            if math.isfinite(y):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(float(step))
                ys.append(y)
    if not series:
        return None

    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    names = sorted(series)
    fig, axes = plt.subplots(len(names), 1, figsize=(6, 2.2 * len(names)), squeeze=False, sharex=True)
    for ax, name in zip(axes[:, 0], names):
        xs, ys = series[name]
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    png = Path(out_dir) / png_name
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return png


# ----------------------------------------------------------------------------- CLI wrapper


def emit_result(result: dict, stream=None) -> None:
    """Print the result as one JSON line (the last line on stdout, by the CLI contract)."""
    stream = sys.stdout if stream is None else stream
    stream.write(json.dumps(result, default=str, allow_nan=True) + "\n")
    stream.flush()


def _one_line(err: BaseException) -> str:
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])  # KeyError's str() adds quotes around the message
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def _close_process_group() -> None:
    """Tear the distributed backend down while the interpreter still runs: a gloo group left to
    exit-time destruction can abort a rank ("terminate called without an active exception",
    exit -6) while its peer is still shutting down. Local to each rank: no collective."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_command(
    prog: str,
    command: Callable[[], dict],
    out_dir: str | os.PathLike | None = None,
    user_errors: tuple[type[BaseException], ...] = USER_ERRORS,
) -> int:
    """Run one CLI command and return its exit code.

    - While `command()` runs, stdout is redirected to stderr (Lightning's progress bar and any
      print go there), so the JSON result printed afterwards is the last line on stdout.
    - `user_errors` (bad input): one line `"{prog}: error: {message}"` on stderr, exit code 2,
      and `out_dir` is removed if this run created it, so nothing half-written is left.
    - Any other exception propagates with its traceback: that is a bug, not bad input.
    """
    out_path = Path(out_dir) if out_dir is not None else None
    created = out_path is not None and not out_path.exists()
    real_stdout = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            try:
                result = command()
            finally:
                _close_process_group()
    except user_errors as err:
        if created and out_path.exists():
            shutil.rmtree(out_path, ignore_errors=True)
        sys.stderr.write(f"{prog}: error: {_one_line(err)}\n")
        sys.stderr.flush()
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    if result is not None:  # None: a non-zero rank of a distributed run, which prints nothing
        emit_result(result, real_stdout)
    return 0
