"""The one training loop of phbench.

Methods implement :class:`benchmark.contract.Trainable` (optimisers, stages, one step); this trainer owns
stages, epochs and step budgets, shuffling, device placement, bf16 autocast, gradient clipping, per-epoch and
per-step LR schedules, validation every k epochs, early stopping, best-weight restore (within a stage, never
across one), EMA weights, hooks, progress bars and resumable checkpoints. Nothing else in the suite writes an
epoch loop.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from benchmark.contract import Method, Trainable
from benchmark.device import autocast
from benchmark.io import atomic_path

TRAINER_VERSION = 2  # part of every train key: a change to what the loop does retrains every model
log = logging.getLogger(__name__)


@contextlib.contextmanager
def frozen(*modules: torch.nn.Module) -> Iterator[None]:
    """Temporarily stop gradients into ``modules`` (alternating updates: freeze D while E trains)."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@dataclass(frozen=True)
class Stage:
    """One named training stage. ``None`` budgets come from the method config (``epochs``, ``max_steps``,
    ``val_every``, ``early_stop_patience``). A stage ends after ``epochs`` epochs or ``max_steps`` optimiser
    steps, whichever comes first (``epochs=None`` with a step budget: as many epochs as the steps need).
    ``select_best``: restore the best-validation weights of this stage at its end."""

    name: str = "train"
    epochs: int | None = None
    max_steps: int | None = None
    val_every: int | None = None
    early_stop_patience: int | None = None
    select_best: bool = True

    def budget(self, config: Any) -> tuple[int | None, int | None]:
        """``(epochs, max_steps)`` of this stage under ``config``: the stage's own, else the config's (a stage that
        sets only one of them leaves the other unbounded). The one rule ``Trainer.fit`` and the estimates use."""
        epochs = self.epochs if self.epochs is not None else (
            None if self.max_steps is not None else config.epochs)
        max_steps = self.max_steps if self.max_steps is not None else (
            config.max_steps if self.epochs is None else None)
        return epochs, max_steps


@dataclass(frozen=True)
class Schedule:
    """An LR scheduler and when it steps: ``"epoch"`` (after each epoch), ``"step"`` (after each batch) or
    ``"validation"`` (after each validation, with the validation loss: ``ReduceLROnPlateau``); ``stage``: step
    it only during that stage (a schedule sized for one stage of several)."""

    scheduler: Any
    interval: str = "epoch"
    stage: str | None = None

    def due(self, interval: str, stage: str) -> bool:
        return self.interval == interval and self.stage in (None, stage)


def milestone_schedules(optimizers: dict[str, torch.optim.Optimizer], budget: int, fractions: Sequence[float],
                        gamma: float) -> list[torch.optim.lr_scheduler.MultiStepLR]:
    """lr × ``gamma`` at each fraction of a budget, one MultiStepLR per optimiser: DRAEM / AFSC (×0.2 at 80 / 90 % of
    the epochs, stepped per epoch) and ProxyAno (×0.1 at 50 / 75 % of each module's iterations, stepped per step:
    wrap them in :class:`Schedule` with ``interval="step"``)."""
    milestones = sorted({max(1, int(f * budget)) for f in fractions})
    return [torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=gamma) for opt in optimizers.values()]


@dataclass
class StepContext:
    """Handed to ``training_step`` and the hooks: the optimisers, where training stands, and the helpers."""

    optimizers: dict[str, torch.optim.Optimizer]
    device: torch.device
    amp: bool
    stage: str = "train"
    epoch: int = 0  # within the stage
    stage_epochs: int | None = None  # the stage's epoch budget (None: step-bounded)
    stage_step: int = 0
    global_step: int = 0
    generator: torch.Generator | None = None
    grad_clip_norm: float | None = None

    def autocast(self):
        return autocast(self.device, self.amp)

    @property
    def is_last_epoch(self) -> bool:
        return self.stage_epochs is not None and self.epoch == self.stage_epochs - 1

    def optimize(self, name: str, loss: torch.Tensor, *, retain_graph: bool = False,
                 clip_norm: float | None = None) -> float:
        """zero_grad → backward → (clip) → step on optimiser ``name``; returns the loss value. Raises on NaN."""
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"non-finite loss in optimiser {name!r} at step {self.global_step}")
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward(retain_graph=retain_graph)
        clip = clip_norm if clip_norm is not None else self.grad_clip_norm
        if clip is not None:
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        return float(loss.detach())


@dataclass
class FitReport:
    epochs_run: int = 0
    steps: int = 0
    best_epoch: int = -1
    best_val: float = math.inf
    wall_s: float = 0.0
    train_slices_per_s: float = 0.0
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_stage: str | None = None
    resumed_from_epoch: int | None = None
    # one record per process that trained (a resumed fit has several): its epochs, steps, wall time and who ran it;
    # epochs_run, steps, wall_s and train_slices_per_s above are over all of them
    segments: list[dict[str, Any]] = field(default_factory=list)
    seen: int = 0  # training slices seen, all segments

    def to_dict(self) -> dict[str, Any]:
        """The fit record train.json keeps, with ``history`` (one row per epoch of every segment: stage, epoch,
        mean training losses, ``val_loss`` where validated) so convergence can be read after the fact."""
        out = {k: v for k, v in self.__dict__.items() if k != "seen"}
        out["history"] = [dict(row) for row in self.history]
        return out


class _EMA:
    """Exponential moving averages of some networks' floating-point state (parameters and buffers)."""

    def __init__(self, method: Method, decays: dict[str, float]):
        nets = method.networks()
        unknown = set(decays) - set(nets)
        if unknown:
            raise KeyError(f"{method.name}: ema_decays names unknown networks {sorted(unknown)}")
        self.nets = {k: nets[k] for k in decays}
        self.decays = dict(decays)
        self.shadow = {k: copy.deepcopy(n.state_dict()) for k, n in self.nets.items()}

    @torch.no_grad()
    def update(self) -> None:
        for k, net in self.nets.items():
            d = self.decays[k]
            for name, v in net.state_dict().items():
                s = self.shadow[k][name]
                if torch.is_floating_point(v):
                    s.mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    s.copy_(v)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The EMA weights in the networks for the block (validation), the raw ones back afterwards."""
        raw = {k: copy.deepcopy(n.state_dict()) for k, n in self.nets.items()}
        self.copy_to_networks()
        try:
            yield
        finally:
            for k, n in self.nets.items():
                n.load_state_dict(raw[k])

    def copy_to_networks(self) -> None:
        for k, n in self.nets.items():
            n.load_state_dict(self.shadow[k])

    def reset_from_networks(self) -> None:
        self.shadow = {k: copy.deepcopy(n.state_dict()) for k, n in self.nets.items()}


def _stage_start(stage: int) -> dict[str, Any]:
    """Where training stands at the start of stage ``stage``: no epoch run, no best weights, no patience used."""
    return {"stage": stage, "epoch": 0, "stage_step": 0, "bad": 0, "best_val": math.inf, "best_epoch": -1,
            "best_state": None}


class Trainer:
    """Runs every stage of ``method`` (a Method that is also Trainable).

    ``checkpoint``: a file path; written atomically after every epoch and loaded on start when present, so an
    interrupted run resumes where it stopped (same stage, epoch, RNG state, optimiser and EMA state) and reports
    its whole history (``FitReport.segments``: one per process that trained). A checkpoint that cannot be read
    is ignored with a warning: training starts from scratch and overwrites it.
    ``max_steps_per_epoch``: cut every epoch short (tests).
    """

    def __init__(self, device: torch.device | str = "cpu", *, seed: int = 0, checkpoint: str | Path | None = None,
                 progress: bool = True, max_steps_per_epoch: int | None = None):
        self.device = torch.device(device)
        self.seed = seed
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.progress = progress
        self.max_steps_per_epoch = max_steps_per_epoch

    # ------------------------------------------------------------------------------------------------
    def fit(self, method: Method, train, val=None) -> dict[str, Any]:
        if not isinstance(method, Trainable):
            return FitReport().to_dict()  # training-free method (e.g. thresholding)
        cfg = method.config
        method.to(self.device)
        method.on_fit_start(train, val)
        optimizers = method.configure_optimizers()
        schedules = [s if isinstance(s, Schedule) else Schedule(s) for s in method.schedulers(optimizers)]
        stages = list(method.stages())
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"{method.name}: stage names must be unique, got {names}")
        for s in schedules:
            if s.interval not in ("epoch", "step", "validation") or (s.stage is not None and s.stage not in names):
                raise ValueError(f"{method.name}: schedule interval {s.interval!r} / stage {s.stage!r} unknown")
        ema = _EMA(method, method.ema_decays()) if method.ema_decays() else None
        gen = torch.Generator()
        gen.manual_seed(self.seed)
        ctx = StepContext(optimizers, self.device, bool(cfg.amp), generator=gen,
                          grad_clip_norm=getattr(cfg, "grad_clip_norm", None))
        report = FitReport()
        pos = _stage_start(0)
        state = self._read_checkpoint()
        if state is not None:
            pos = self._load(state, method, optimizers, schedules, ema, gen, ctx, report)
        validates = val is not None and len(val) and type(method).validation_loss is not Trainable.validation_loss

        t0 = time.perf_counter()
        segment = {"process": f"{socket.gethostname()}:{os.getpid()}", "epochs_run": 0, "steps": 0, "wall_s": 0.0,
                   "resumed_from_stage": report.resumed_from_stage, "resumed_from_epoch": report.resumed_from_epoch}
        report.segments.append(segment)
        step0 = ctx.global_step
        for si in range(pos["stage"], len(stages)):
            stage = stages[si]
            epochs, max_steps = stage.budget(cfg)
            if epochs is None and max_steps is None:
                raise ValueError(f"{method.name}: stage {stage.name!r} has neither an epoch nor a step budget")
            val_every = max(1, stage.val_every or getattr(cfg, "val_every", 1) or 1)
            patience = stage.early_stop_patience if stage.early_stop_patience is not None else cfg.early_stop_patience
            ctx.stage, ctx.stage_epochs = stage.name, epochs
            ctx.stage_step = pos["stage_step"]
            stage_log = report.stages.setdefault(stage.name, {"epochs_run": 0, "steps": 0, "best_epoch": -1,
                                                              "best_val": math.inf})
            bar = tqdm(total=epochs, initial=pos["epoch"], desc=f"train {method.name}:{stage.name}",
                       disable=not self.progress, leave=False, dynamic_ncols=True)
            epoch = pos["epoch"]
            while (epochs is None or epoch < epochs) and (max_steps is None or ctx.stage_step < max_steps):
                ctx.epoch = epoch
                method.train_mode(True)
                sums: dict[str, float] = {}
                n_steps = 0
                for batch in train.batches(cfg.batch_size, shuffle=True, generator=gen, device=self.device,
                                           drop_last=len(train) >= cfg.batch_size):
                    logs = method.training_step(batch, ctx)
                    for k, v in logs.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    n_steps += 1
                    ctx.global_step += 1
                    ctx.stage_step += 1
                    report.seen += len(batch)
                    if ema is not None:
                        ema.update()
                    for s in schedules:
                        if s.due("step", stage.name):
                            s.scheduler.step()
                    if max_steps is not None and ctx.stage_step >= max_steps:
                        break
                    if self.max_steps_per_epoch and n_steps >= self.max_steps_per_epoch:
                        break
                if n_steps == 0:  # an empty training set would loop forever on a step budget
                    raise ValueError(f"{method.name}: stage {stage.name!r} got no training batch "
                                     f"({len(train)} training slices)")
                for s in schedules:
                    if s.due("epoch", stage.name):
                        s.scheduler.step()
                method.on_epoch_end(ctx)
                row: dict[str, Any] = {"stage": stage.name, "epoch": epoch,
                                       **{k: v / max(n_steps, 1) for k, v in sums.items()}}
                improved = False
                if validates and (epoch + 1) % val_every == 0:
                    with ema.swapped_in() if ema is not None else contextlib.nullcontext():
                        row["val_loss"] = self._validation_loss(method, val, cfg.batch_size)
                        for s in schedules:
                            if s.due("validation", stage.name):
                                s.scheduler.step(row["val_loss"])
                        if row["val_loss"] < pos["best_val"]:
                            pos.update(best_val=row["val_loss"], best_epoch=epoch, bad=0)
                            pos["best_state"] = copy.deepcopy(method.state_dict()) if stage.select_best else None
                            improved = True
                        else:
                            pos["bad"] += 1
                report.history.append(row)
                segment.update(epochs_run=segment["epochs_run"] + 1, steps=ctx.global_step - step0,
                               wall_s=time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if isinstance(v, float)})
                epoch += 1
                pos.update(epoch=epoch, stage_step=ctx.stage_step)
                self._save(method, optimizers, schedules, ema, gen, ctx, report, pos)
                if patience is not None and pos["bad"] >= patience and not improved:
                    break
            bar.close()
            if ema is not None:
                ema.copy_to_networks()  # the averaged weights are the trained ones
            if pos["best_state"] is not None:
                method.load_state_dict(pos["best_state"])
            if ema is not None:
                ema.reset_from_networks()  # the next stage averages from what this stage kept
            stage_log.update(epochs_run=epoch, steps=ctx.stage_step, best_epoch=pos["best_epoch"],
                             best_val=pos["best_val"])
            method.on_stage_end(ctx)
            report.best_val, report.best_epoch = pos["best_val"], pos["best_epoch"]
            pos = _stage_start(si + 1)  # best weights and patience never cross a stage
            self._save(method, optimizers, schedules, ema, gen, ctx, report, pos)
        segment.update(steps=ctx.global_step - step0, wall_s=time.perf_counter() - t0)
        report.epochs_run = len(report.history)  # every segment's epochs: the history came back with the checkpoint
        report.steps = ctx.global_step
        report.wall_s = sum(seg["wall_s"] for seg in report.segments)
        report.train_slices_per_s = report.seen / report.wall_s if report.wall_s > 0 else float("nan")
        method.train_mode(False)
        return report.to_dict()

    @torch.no_grad()
    def _validation_loss(self, method: Method, val, batch_size: int) -> float:
        method.train_mode(False)
        total, n = 0.0, 0
        for batch in val.batches(max(batch_size, 32), device=self.device):
            with autocast(self.device, bool(method.config.amp)):
                total += float(method.validation_loss(batch)) * len(batch)
            n += len(batch)
        method.train_mode(True)
        return total / max(n, 1)

    # -- resumable checkpoints ----------------------------------------------------------------------------
    def _save(self, method, optimizers, schedules, ema, gen, ctx, report, pos) -> None:
        if not self.checkpoint:
            return
        state = {
            "method": method.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "schedulers": [s.scheduler.state_dict() for s in schedules],
            "ema": None if ema is None else ema.shadow,
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
            "global_step": ctx.global_step,
            "position": pos,
            "stages": report.stages,
            # the record of the segments so far, so a resumed fit reports its whole history and wall time
            "history": report.history,
            "segments": report.segments,
            "seen": report.seen,
        }
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)

    def _read_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None: none there, or one that cannot be read (damaged on disk), which
        is safe to ignore -- training starts from scratch, with a warning, and overwrites it."""
        if not (self.checkpoint and self.checkpoint.exists()):
            return None
        try:
            state = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
            if not isinstance(state, dict) or not {"method", "position", "generator"} <= set(state):
                raise ValueError("not a trainer checkpoint")
            return state
        except Exception as err:  # torch reports a damaged zip as RuntimeError, OSError, EOFError, pickle errors
            log.warning("%s: unreadable checkpoint (%s: %s); training from scratch", self.checkpoint,
                        type(err).__name__, " ".join(str(err).split()))
            return None

    def _load(self, state, method, optimizers, schedules, ema, gen, ctx, report) -> dict[str, Any]:
        method.load_state_dict(state["method"])
        for k, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        for s, sd in zip(schedules, state.get("schedulers", [])):
            s.scheduler.load_state_dict(sd)
        if ema is not None and state.get("ema") is not None:
            ema.shadow = state["ema"]
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])  # dropout, noise and sampling use the global generator
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        ctx.global_step = int(state["global_step"])
        report.stages = dict(state.get("stages", {}))
        report.history = list(state.get("history", []))
        # a checkpoint written before segments were recorded: its epochs and time are unknown, counted as one segment
        report.segments = [dict(seg) for seg in state.get("segments", [])] or [
            {"process": "", "epochs_run": None, "steps": int(state["global_step"]), "wall_s": 0.0}]
        report.seen = int(state.get("seen", 0))
        pos = dict(state["position"])
        names = [s.name for s in method.stages()]
        report.resumed_from_stage = names[pos["stage"]] if pos["stage"] < len(names) else "done"
        report.resumed_from_epoch = int(pos["epoch"])
        return pos
