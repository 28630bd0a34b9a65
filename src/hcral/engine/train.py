"""The training loop: one visible function per stage, DETR-engine style.

``train(cfg)`` seeds, builds data/model/optimiser, optionally resumes, then runs
``train_one_epoch`` per epoch with checkpoints and evaluation in between. A resumed
run continues exactly: weights (loss-state buffers included), optimiser, GradScaler,
iteration, RNG states are restored and the batches of the interrupted epoch that were
already used are skipped without being loaded, so on CPU with ``num_workers = 0`` the
following steps match an uninterrupted run bit for bit. (With data-loader workers the
order of images still matches, but the workers' augmentation RNG restarts.)
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from hcral.config import Config, TrainConfig
from hcral.engine import distributed as du
from hcral.engine.checkpoint import (
    LAST,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from hcral.engine.ema import ModelEMA
from hcral.engine.logging import CSVLogger, ProgressBar, TensorBoardWriter, log, setup_logging
from hcral.engine.schedule import LRSchedule, scaled_lr
from hcral.fileio import atomic_write_text

EvaluateFn = Callable[..., dict[str, float]]
# what a checkpoint saves besides the run state: bare model, optimiser, scaler, EMA or None
TrainParts = tuple[nn.Module, torch.optim.Optimizer, torch.amp.GradScaler, "ModelEMA | None"]


class NonFiniteLossError(RuntimeError):
    """A loss (or the gradient norm) became NaN/inf under ``train.on_nonfinite = "stop"``."""


@dataclass
class RunState:
    """Where the run is; together with the weights this is what a checkpoint restores."""

    epoch: int = 0  # current epoch, 0-based
    step_in_epoch: int = 0  # batches of ``epoch`` already consumed
    iteration: int = 0  # batches consumed in the whole run (skipped steps included)
    skipped_steps: int = 0  # steps dropped for a non-finite loss (on_nonfinite = "skip")
    last_losses: dict[str, float] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)  # the training set's, if it has them


@dataclass
class StepResult:
    losses: dict[str, float]  # averaged over ranks; "loss" is their sum
    grad_norm: float
    bad_terms: list[str]  # non-empty: the step was not applied
    stop_requested: bool  # some rank got SIGTERM/SIGINT


class StopFlag:
    """SIGTERM / first SIGINT ask the loop to checkpoint and return after this step.

    A second SIGINT raises ``KeyboardInterrupt`` at once. Handlers are installed only
    in the main thread (Python allows nothing else) and restored by :meth:`restore`.
    """

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def install(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        # os.write, not logging: a handler may run while the logging lock is held
        os.write(2, f"hcral: got signal {signum}; checkpointing after this step\n".encode())

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - user code and transforms may use it
    torch.manual_seed(seed)


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Make CUDA kernels deterministic while training, then restore the global flags.

    CPU training is already deterministic. On CUDA, cuDNN's convolution backward and
    ``index_add``/scatter use atomics whose order varies run to run, so an interrupted
    and resumed run drifts from an uninterrupted one by float rounding (≈ 1e-6 after a
    few steps, more later). With ``enabled`` both runs are equal, at some speed cost.
    """
    if not enabled:
        yield
        return
    # cuBLAS reads this once, at its first call in the process; set it before any.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2:]


def build_datasets(cfg: Config) -> tuple[Dataset, Dataset]:
    """Training and validation :class:`hcral.data.CocoDetection` from ``cfg.data``."""
    from hcral.data.coco import CocoDetection
    from hcral.data.transforms import build_transforms

    d = cfg.data
    train_tf = build_transforms(True, d.min_size, d.max_size, d.flip_prob)
    val_tf = build_transforms(False, d.min_size, d.max_size)
    train_set = CocoDetection(d.train_json, d.train_images, train_tf, skip_bad=d.skip_bad)
    val_set = CocoDetection(d.val_json, d.val_images, val_tf, skip_bad=d.skip_bad)
    return train_set, val_set


def make_train_loader(
    dataset: Dataset,
    cfg: Config,
    *,
    rank: int,
    world_size: int,
    epoch: int,
    skip_batches: int = 0,
) -> DataLoader:
    """This rank's loader for ``epoch``, with its first ``skip_batches`` batches dropped.

    The order comes from a ``DistributedSampler`` seeded by ``train.seed`` and the epoch
    (the same for any number of restarts); skipped batches are never loaded, so they
    consume no augmentation randomness.
    """
    from hcral.data.collate import collate

    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.train.seed
    )
    sampler.set_epoch(epoch)
    indices = list(sampler)[skip_batches * cfg.train.batch_size :]
    # A private generator: creating the iterator must not draw from the global RNG,
    # whose state a resumed run restores.
    gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=indices,
        num_workers=cfg.data.num_workers,
        collate_fn=partial(collate, size_divisibility=cfg.data.size_divisibility),
        generator=gen,
        pin_memory=torch.cuda.is_available(),
    )


def iters_per_epoch(num_images: int, batch_size: int, world_size: int) -> int:
    """Batches per rank per epoch (``DistributedSampler`` pads to a multiple of the world)."""
    return math.ceil(math.ceil(num_images / world_size) / batch_size)


def _image_ids(targets: Sequence[dict[str, Any]]) -> list[int]:
    return [int(t["image_id"]) for t in targets if "image_id" in t]


def train_step(
    model: nn.Module,
    batch: Any,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    use_amp: bool,
    grad_clip: float,
    stop_requested: bool = False,
) -> StepResult:
    """One forward/backward/update on ``batch`` (already on the model's device).

    The loss terms and the stop flag are averaged over ranks in one all-reduce before
    the backward pass, so every rank takes the same decision: if any term is non-finite
    on any rank, no rank steps (otherwise DDP's gradient all-reduce would hang).
    """
    device_type = batch.images.device.type
    with torch.autocast(device_type=device_type, dtype=torch.float16, enabled=use_amp):
        loss_dict = model(batch.images, batch.image_sizes, batch.targets)
    if not loss_dict:
        raise ValueError("the model returned no losses in training mode")
    total = sum(v.float() for v in loss_dict.values())
    flag = torch.tensor(float(stop_requested), device=total.device)
    reduced = du.reduce_dict({**loss_dict, "loss": total, "_stop": flag})
    names = list(reduced)
    values = dict(zip(names, torch.stack([reduced[k].float() for k in names]).tolist()))
    stop = values.pop("_stop") > 0
    bad = sorted(k for k, v in values.items() if not math.isfinite(v) and k != "loss")
    optimizer.zero_grad(set_to_none=True)
    if bad:
        return StepResult(values, math.nan, bad, stop)
    scaler.scale(total).backward()
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    max_norm = grad_clip if grad_clip > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if not use_amp and not math.isfinite(grad_norm):
        # Under AMP an inf gradient is the GradScaler's business: it skips and rescales.
        optimizer.zero_grad(set_to_none=True)
        return StepResult(values, grad_norm, ["grad_norm"], stop)
    scaler.step(optimizer)
    scaler.update()
    return StepResult(values, grad_norm, [], stop)


def _nonfinite_message(result: StepResult, state: RunState, batch: Any) -> str:
    # every rank reports its own image ids; the error is raised on all ranks alike
    ids = sorted(i for part in du.all_gather_object(_image_ids(batch.targets)) for i in part)
    terms = ", ".join(f"{k}={result.losses.get(k, result.grad_norm)}" for k in result.bad_terms)
    return (
        f"non-finite {terms} at iteration {state.iteration} (epoch {state.epoch}); "
        f"batch image ids {ids}"
    )


class Reporter:
    """CSV + TensorBoard + progress bar; averages the losses over each logging window."""

    def __init__(self, out_dir: Path, total_iters: int, state: RunState, resumed: bool, main: bool):
        self.csv = CSVLogger(out_dir / "log.csv", state.iteration if resumed else None, main)
        self.tb = TensorBoardWriter(out_dir / "tb", enabled=main)
        self.bar = ProgressBar(total_iters, initial=state.iteration, enabled=main)
        self._sums: dict[str, float] = {}
        self._count = 0
        self._t0 = time.perf_counter()

    def step(self, result: StepResult, state: RunState, lr: float, log_every: int) -> None:
        if not result.bad_terms:
            for k, v in result.losses.items():
                self._sums[k] = self._sums.get(k, 0.0) + v
            self._count += 1
        self.bar.update(1, loss=result.losses.get("loss", math.nan), lr=lr)
        if state.iteration % log_every == 0 and self._count > 0:
            elapsed = time.perf_counter() - self._t0
            row: dict[str, Any] = {"iter": state.iteration, "epoch": state.epoch, "lr": lr}
            row.update({k: s / self._count for k, s in self._sums.items()})
            row.update(grad_norm=result.grad_norm, time=elapsed / log_every)
            row["skipped"] = state.skipped_steps
            self.csv.write(row)
            self.tb.write(row, state.iteration)
            self._sums, self._count, self._t0 = {}, 0, time.perf_counter()

    def close(self) -> None:
        self.bar.close()
        self.tb.close()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    schedule: LRSchedule,
    state: RunState,
    *,
    tcfg: TrainConfig,
    device: torch.device,
    reporter: Reporter,
    stop: StopFlag,
    max_iters: int,
    ema: ModelEMA | None = None,
) -> str:
    """Train until the loader ends, ``max_iters`` is reached or a stop is requested.

    ``ema``, if given, is updated after every step that updated the weights.

    Returns:
        ``"epoch_done"``, ``"max_iters"`` or ``"stopped"`` (signal).
    """
    model.train()
    use_amp = tcfg.amp and device.type == "cuda"
    for batch in loader:
        lr = schedule.apply(optimizer, state.iteration)
        batch = batch.to(device, non_blocking=True)
        result = train_step(
            model,
            batch,
            optimizer,
            scaler,
            use_amp=use_amp,
            grad_clip=tcfg.grad_clip,
            stop_requested=stop.requested,
        )
        if result.bad_terms:
            message = _nonfinite_message(result, state, batch)
            if tcfg.on_nonfinite == "stop":
                raise NonFiniteLossError(message + '; set train.on_nonfinite="skip" to go on')
            state.skipped_steps += 1
            log.warning("skipping step: %s (%d skipped so far)", message, state.skipped_steps)
        else:
            state.last_losses = result.losses
            if ema is not None:
                ema.update(model)
        state.iteration += 1
        state.step_in_epoch += 1
        reporter.step(result, state, lr, tcfg.log_every)
        if result.stop_requested:
            return "stopped"
        if 0 < max_iters <= state.iteration:
            return "max_iters"
    return "epoch_done"


def checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: RunState,
    cfg: Config,
    lr: float,
    ema: ModelEMA | None = None,
) -> dict[str, Any]:
    """Everything a resumed run needs, as weights_only-loadable values.

    Collective: every rank must call it (the RNG states of all ranks are gathered).
    """
    return {
        "format": 1,
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,  # inference prefers it
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": state.epoch,
        "step_in_epoch": state.step_in_epoch,
        "iteration": state.iteration,
        "skipped_steps": state.skipped_steps,
        "lr": lr,  # the schedule itself is a pure function of the iteration
        "world_size": du.get_world_size(),
        "batch_size": cfg.train.batch_size,
        "rng": du.all_gather_object(get_rng_state()),  # one entry per rank
        "config": cfg.to_dict(),
        "class_names": list(state.class_names),  # so predict needs no annotation file
    }


def restore_checkpoint(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: Config,
) -> RunState:
    """Load weights, optimiser and scaler; return the position (RNG is restored later)."""
    state = RunState(
        epoch=int(ckpt["epoch"]),
        step_in_epoch=int(ckpt["step_in_epoch"]),
        iteration=int(ckpt["iteration"]),
        skipped_steps=int(ckpt["skipped_steps"]),
    )
    same_batches = (
        ckpt["world_size"] == du.get_world_size() and ckpt["batch_size"] == cfg.train.batch_size
    )
    if state.step_in_epoch and not same_batches:
        raise ValueError(
            f"cannot resume mid-epoch with a different batch layout: checkpoint has "
            f"world_size={ckpt['world_size']}, train.batch_size={ckpt['batch_size']}; this run "
            f"has {du.get_world_size()}, {cfg.train.batch_size}"
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    return state


def _restore_ema(ema: ModelEMA | None, ckpt: dict[str, Any], path: Path) -> None:
    saved = ckpt.get("ema")
    if ema is None:
        if saved is not None:
            log.warning("%s holds EMA weights but train.ema_decay is 0: they are dropped", path)
        return
    if saved is None:
        # e.g. EMA switched on for a resumed run: the average starts from the current weights
        log.warning("%s holds no EMA weights: the EMA starts from the resumed weights", path)
        ema.module.load_state_dict(ckpt["model"])
        return
    ema.load_state_dict(saved)


def resolve_resume(resume: str | bool | None, output_dir: Path) -> Path | None:
    """``True`` -> ``output_dir/last.pt``; a string -> that file; ``None``/``False`` -> none."""
    if resume is None or resume is False:
        return None
    path = output_dir / LAST if resume is True else Path(resume)
    if not path.is_file():
        raise ValueError(f"resume: checkpoint {str(path)!r} does not exist")
    return path


def _check_train_config(t: TrainConfig) -> None:
    checks = {
        "epochs": t.epochs >= 1,
        "batch_size": t.batch_size >= 1,
        "base_batch_size": t.base_batch_size >= 1,
        "log_every": t.log_every >= 1,
        "checkpoint_every": t.checkpoint_every >= 0,
        "eval_every": t.eval_every >= 0,
        "max_iters": t.max_iters >= 0,
        "warmup_iters": t.warmup_iters >= 0,
        "on_nonfinite": t.on_nonfinite in ("stop", "skip"),
        "ema_decay": 0.0 <= t.ema_decay < 1.0,
        "ema_tau": t.ema_tau > 0,
    }
    for name, ok in checks.items():
        if not ok:
            raise ValueError(f"train.{name} has an invalid value: {getattr(t, name)!r}")


def _save(
    out_dir: Path,
    name: str,
    parts: TrainParts,
    state: RunState,
    cfg: Config,
    lr: float,
) -> None:
    model, optimizer, scaler, ema = parts
    ckpt = checkpoint_state(model, optimizer, scaler, state, cfg, lr, ema)  # collective
    if du.is_main_process():
        save_checkpoint(ckpt, out_dir / name)
        log.info("saved %s (iteration %d)", out_dir / name, state.iteration)


def _run_evaluation(
    evaluate_fn: EvaluateFn | None,
    model: nn.Module,
    val_set: Dataset | None,
    cfg: Config,
    device: torch.device,
    output_json: Path | None,
) -> dict[str, float]:
    if val_set is None:
        return {}
    if evaluate_fn is None:
        from hcral.engine.evaluate import evaluate as evaluate_fn
    # Evaluation must not move the training RNGs (a data loader draws a seed, for one):
    # a run resumed from the checkpoint written before it would otherwise diverge.
    rng, was_training = get_rng_state(), model.training
    metrics = evaluate_fn(model, val_set, cfg, device, output_json=output_json)
    set_rng_state(rng)
    model.train(was_training)
    return {k: float(v) for k, v in metrics.items()}


def _sync_batchnorm(model: nn.Module, info: du.DistInfo) -> nn.Module:
    """Under DDP on CUDA, share BatchNorm batch statistics across ranks (SyncBatchNorm).

    Trainable BatchNorm (backbones trained from scratch) would otherwise normalise each
    rank's few images on their own, so the result would depend on the number of GPUs.
    SyncBatchNorm needs CUDA; on CPU the statistics stay per rank, with a warning.
    """
    trainable_bn = any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
        for m in model.modules()
    )
    if info.world_size == 1 or not trainable_bn:
        return model
    if info.device.type == "cuda":
        log.info("converting BatchNorm to SyncBatchNorm across %d ranks", info.world_size)
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    log.warning("BatchNorm statistics are per rank: SyncBatchNorm needs CUDA")
    return model


def _wrap_ddp(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    ids = [device.index] if device.type == "cuda" else None
    # RunningStat buffers sync themselves and frozen BatchNorm statistics do not change,
    # so re-broadcasting every buffer before each forward would be wasted traffic.
    # (torch >= 2.14 renamed the switch; both keep the one-off sync at construction.)
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=False, **{key: False}
    )


def _build_optimizer(model: nn.Module, tcfg: TrainConfig) -> torch.optim.SGD:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.SGD(
        params, lr=tcfg.lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay
    )


def _end_epoch(
    out_dir: Path,
    parts: TrainParts,
    state: RunState,
    cfg: Config,
    lr: float,
) -> None:
    state.epoch += 1
    state.step_in_epoch = 0
    every, k = cfg.train.checkpoint_every, state.epoch
    if k == cfg.train.epochs or (every > 0 and k % every == 0):
        _save(out_dir, f"epoch_{k}.pt", parts, state, cfg, lr)


def _write_json(path: Path, obj: dict[str, Any], mode: str = "w") -> None:
    # NaN (e.g. AP of an absent size range) is not JSON; null keeps the file standard
    clean = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in obj.items()
    }
    with path.open(mode) as f:
        f.write(json.dumps(clean, sort_keys=True) + ("\n" if mode == "a" else ""))


def train(
    cfg: Config,
    resume: str | bool | None = None,
    *,
    model: nn.Module | None = None,
    train_set: Dataset | None = None,
    val_set: Dataset | None = None,
    evaluate_fn: EvaluateFn | None = None,
) -> dict[str, Any]:
    """Train a detector as ``cfg`` says; single process or one rank of a torchrun job.

    Args:
        cfg: the experiment config; ``model.num_classes = 0`` takes the dataset's.
        resume: ``True`` continues from ``train.output_dir/last.pt``, a path from that
            checkpoint; ``None``/``False`` starts afresh.
        model, train_set, val_set, evaluate_fn: replace what ``cfg`` would build (tests,
            notebooks). Without ``val_set`` (and with ``train_set`` given) nothing is
            evaluated. ``evaluate_fn`` has the signature of
            :func:`hcral.engine.evaluate.evaluate`.

    Returns:
        The final metrics (``AP``, ``AP50`` ... in percent) plus ``final_loss`` and the
        other ``final_loss_*`` terms, ``iterations``, ``epochs_completed``,
        ``skipped_steps``, ``wall_time_s``, ``interrupted`` and ``evaluated_weights``
        (``"ema"`` with ``train.ema_decay`` > 0: the metrics are the EMA weights', else
        ``"raw"``). Also written to ``output_dir/metrics.json`` (main process).
    """
    owns_group = not du.is_initialized()
    info = du.init_distributed()
    setup_logging(info.rank)
    stop = StopFlag().install()
    try:
        with du.fail_fast(), deterministic_algorithms(cfg.train.deterministic):
            return _train(cfg, resume, info, stop, model, train_set, val_set, evaluate_fn)
    finally:
        stop.restore()
        if owns_group:
            du.cleanup()


def _train(
    cfg: Config,
    resume: str | bool | None,
    info: du.DistInfo,
    stop: StopFlag,
    model: nn.Module | None,
    train_set: Dataset | None,
    val_set: Dataset | None,
    evaluate_fn: EvaluateFn | None,
) -> dict[str, Any]:
    tcfg = cfg.train
    _check_train_config(tcfg)
    out_dir, main = Path(tcfg.output_dir), info.rank == 0
    seed_everything(tcfg.seed + info.rank)
    cfg, model, train_set, val_set = _build_parts(cfg, model, train_set, val_set)
    bare = _sync_batchnorm(model, info).to(info.device)
    if info.world_size > 1:
        model = _wrap_ddp(bare, info.device)
    optimizer = _build_optimizer(bare, tcfg)
    scaler = torch.amp.GradScaler("cuda", enabled=tcfg.amp and info.device.type == "cuda")
    ema = ModelEMA(bare, tcfg.ema_decay, tcfg.ema_tau) if tcfg.ema_decay > 0 else None
    parts: TrainParts = (bare, optimizer, scaler, ema)
    state, resumed = _resume(parts, cfg, resume, info)
    state.class_names = [str(n) for n in getattr(train_set, "class_names", None) or []]
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    ipe = iters_per_epoch(len(train_set), tcfg.batch_size, info.world_size)
    base_lr = scaled_lr(tcfg.lr, tcfg.batch_size * info.world_size, tcfg.base_batch_size)
    schedule = LRSchedule(base_lr, ipe, tcfg.warmup_iters, tcfg.warmup_ratio, tuple(tcfg.lr_steps))
    total = tcfg.epochs * ipe if tcfg.max_iters == 0 else min(tcfg.max_iters, tcfg.epochs * ipe)
    reporter = Reporter(out_dir, total, state, resumed, main)
    evaluated = ema.module if ema is not None else bare
    loop = _Loop(cfg, info, parts, state, schedule, ipe, total, reporter, stop)
    t0 = time.perf_counter()
    try:
        reason = loop.run(
            model,
            train_set,
            lambda: _run_evaluation(evaluate_fn, evaluated, val_set, cfg, info.device, None),
        )
    finally:
        reporter.close()
    stats = _run_stats(state, time.perf_counter() - t0, reason, ema)
    _save(out_dir, LAST, parts, state, cfg, schedule(max(state.iteration - 1, 0)))
    if reason == "stopped":
        log.warning("stopped by signal at iteration %d; resume with resume=True", state.iteration)
        return stats
    output_json = out_dir / "detections_val.json" if main else None
    metrics = _run_evaluation(evaluate_fn, evaluated, val_set, cfg, info.device, output_json)
    result = {**metrics, **stats}
    if main:
        _write_json(out_dir / "metrics.json", result)
    du.barrier()
    return result


def _build_parts(
    cfg: Config, model: nn.Module | None, train_set: Dataset | None, val_set: Dataset | None
) -> tuple[Config, nn.Module, Dataset, Dataset | None]:
    """Datasets from ``cfg.data`` and the model from ``cfg.model`` where not given;
    ``model.num_classes: 0`` takes the training set's class count."""
    if train_set is None:
        train_set, built_val = build_datasets(cfg)
        val_set = val_set if val_set is not None else built_val
    if cfg.model.num_classes == 0:
        n = int(train_set.num_classes)  # type: ignore[attr-defined]
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=n))
    if model is None:
        from hcral.models import build_model

        model = build_model(cfg.model)
    return cfg, model, train_set, val_set


def _resume(
    parts: TrainParts, cfg: Config, resume: str | bool | None, info: du.DistInfo
) -> tuple[RunState, bool]:
    """The run state restored from the checkpoint ``resume`` names (weights, optimizer,
    scaler, EMA and this rank's RNG loaded in place), or a fresh one; and whether it
    resumed."""
    ckpt_path = resolve_resume(resume, Path(cfg.train.output_dir))
    if ckpt_path is None:
        return RunState(), False
    bare, optimizer, scaler, ema = parts
    ckpt = load_checkpoint(ckpt_path)
    state = restore_checkpoint(ckpt, bare, optimizer, scaler, cfg)
    _restore_ema(ema, ckpt, ckpt_path)
    if len(ckpt["rng"]) == info.world_size:
        set_rng_state(ckpt["rng"][info.rank])
    log.info("resumed from %s at iteration %d", ckpt_path, state.iteration)
    return state, True


@dataclasses.dataclass
class _Loop:
    """The epochs of one run: train, end each epoch (checkpoint), evaluate every
    ``train.eval_every`` epochs. The final evaluation is the caller's."""

    cfg: Config
    info: du.DistInfo
    parts: TrainParts
    state: RunState
    schedule: LRSchedule
    ipe: int  # iterations per epoch
    total: int  # iterations of the whole run
    reporter: Reporter
    stop: StopFlag

    def run(
        self, model: nn.Module, train_set: Dataset, evaluate: Callable[[], dict[str, Any]]
    ) -> str:
        """Returns why it ended: ``"epoch_done"``, ``"max_iters"`` or ``"stopped"``."""
        tcfg, state, (_, optimizer, scaler, ema) = self.cfg.train, self.state, self.parts
        out_dir, reason = Path(tcfg.output_dir), "epoch_done"
        while state.epoch < tcfg.epochs and state.iteration < self.total and reason == "epoch_done":
            loader = make_train_loader(
                train_set,
                self.cfg,
                rank=self.info.rank,
                world_size=self.info.world_size,
                epoch=state.epoch,
                skip_batches=state.step_in_epoch,
            )
            reason = train_one_epoch(
                model,
                loader,
                optimizer,
                scaler,
                self.schedule,
                state,
                tcfg=tcfg,
                device=self.info.device,
                reporter=self.reporter,
                stop=self.stop,
                max_iters=self.total,
                ema=ema,
            )
            if state.step_in_epoch < self.ipe:
                continue  # stopped or max_iters inside the epoch: the loop test ends it
            _end_epoch(out_dir, self.parts, state, self.cfg, self.schedule(state.iteration - 1))
            every, k = tcfg.eval_every, state.epoch
            # the final evaluation happens after the loop, whatever eval_every says
            if reason == "epoch_done" and every and k % every == 0 and state.iteration < self.total:
                metrics = evaluate()
                if self.info.rank == 0 and metrics:
                    _write_json(out_dir / "eval.jsonl", {"epoch": k, **metrics}, "a")
        return reason


def _run_stats(state: RunState, wall: float, reason: str, ema: ModelEMA | None) -> dict[str, Any]:
    """The run's own numbers that go into metrics.json beside the COCO metrics."""
    stats: dict[str, Any] = {f"final_{k}": v for k, v in state.last_losses.items()}
    stats.update(
        iterations=state.iteration,
        epochs_completed=state.epoch,
        skipped_steps=state.skipped_steps,
        wall_time_s=wall,  # of the training loop, this call only when resumed
        interrupted=reason == "stopped",
        evaluated_weights="ema" if ema is not None else "raw",
    )
    return stats
