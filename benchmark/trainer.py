"""The one training loop of phbench.

Methods implement :class:`benchmark.contract.Trainable` (optimisers + one step); this trainer owns
epochs, shuffling, device placement, bf16 autocast, validation, early stopping, best-weight restore,
progress bars and resumable checkpoints. Nothing else in the suite writes an epoch loop.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from benchmark.contract import Method, Trainable
from benchmark.device import autocast
from benchmark.io import atomic_path


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


@dataclass
class StepContext:
    """Handed to ``training_step``: the optimisers and the autocast/step helpers."""

    optimizers: dict[str, torch.optim.Optimizer]
    device: torch.device
    amp: bool
    epoch: int = 0
    global_step: int = 0
    generator: torch.Generator | None = None

    def autocast(self):
        return autocast(self.device, self.amp)

    def optimize(self, name: str, loss: torch.Tensor, *, retain_graph: bool = False) -> float:
        """zero_grad → backward → step on optimiser ``name``; returns the loss value. Raises on NaN."""
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"non-finite loss in optimiser {name!r} at step {self.global_step}")
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward(retain_graph=retain_graph)
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
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "history"}


class Trainer:
    """Runs ``method`` (a Method that is also Trainable) for ``config.epochs`` epochs.

    ``checkpoint``: a file path; written atomically after every epoch and loaded on start when present,
    so an interrupted run resumes where it stopped (``weights_only=True``).
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
        optimizers = method.configure_optimizers()
        schedulers = method.schedulers(optimizers)
        gen = torch.Generator()
        gen.manual_seed(self.seed)
        ctx = StepContext(optimizers, self.device, bool(cfg.amp), generator=gen)
        report = FitReport()
        best_state: dict[str, Any] | None = None
        bad_epochs = 0
        start_epoch = 0
        if self.checkpoint and self.checkpoint.exists():
            state = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
            method.load_state_dict(state["method"])
            for k, opt in optimizers.items():
                opt.load_state_dict(state["optimizers"][k])
            for s, sd in zip(schedulers, state.get("schedulers", [])):
                s.load_state_dict(sd)
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])  # dropout, noise and sampling use the global generator
            if self.device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            start_epoch = int(state["epoch"])
            ctx.global_step = int(state["global_step"])
            report.best_val = float(state["best_val"])
            report.best_epoch = int(state["best_epoch"])
            bad_epochs = int(state["bad_epochs"])
            best_state = state.get("best_state")
            report.resumed_from_epoch = start_epoch

        t0 = time.perf_counter()
        seen = 0
        bar = tqdm(range(start_epoch, cfg.epochs), desc=f"train {method.name}", disable=not self.progress,
                   leave=False, dynamic_ncols=True)
        for epoch in bar:
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
                seen += len(batch)
                if self.max_steps_per_epoch and n_steps >= self.max_steps_per_epoch:
                    break
            for s in schedulers:
                s.step()
            row = {"epoch": epoch, **{k: v / max(n_steps, 1) for k, v in sums.items()}}
            improved = False
            if val is not None and len(val) and type(method).validation_loss is not Trainable.validation_loss:
                row["val_loss"] = self._validation_loss(method, val, cfg.batch_size)
                if row["val_loss"] < report.best_val:
                    report.best_val, report.best_epoch, bad_epochs, improved = row["val_loss"], epoch, 0, True
                    best_state = copy.deepcopy(method.state_dict())
                else:
                    bad_epochs += 1
            report.history.append(row)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k != "epoch"})
            self._save(method, optimizers, schedulers, gen, epoch + 1, ctx.global_step, report, bad_epochs,
                       best_state)
            if cfg.early_stop_patience is not None and bad_epochs >= cfg.early_stop_patience and not improved:
                break
        bar.close()
        if best_state is not None:
            method.load_state_dict(best_state)
        report.epochs_run = len(report.history)
        report.steps = ctx.global_step
        report.wall_s = time.perf_counter() - t0
        report.train_slices_per_s = seen / report.wall_s if report.wall_s > 0 else float("nan")
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

    def _save(self, method, optimizers, schedulers, gen, epoch, global_step, report, bad_epochs, best_state):
        if not self.checkpoint:
            return
        state = {
            "method": method.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "schedulers": [s.state_dict() for s in schedulers],
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
            "epoch": epoch,
            "global_step": global_step,
            "best_val": report.best_val,
            "best_epoch": report.best_epoch,
            "bad_epochs": bad_epochs,
            "best_state": best_state,
        }
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)
