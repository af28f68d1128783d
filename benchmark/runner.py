"""Run a table: for each (method, variant, seed) train → calibrate → score → metric rows in the run store.

A finished run (its rows.csv exists) is skipped; an interrupted one resumes from its checkpoint. A run that
fails is reported on one line and the others continue, so one broken method never loses the rest.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from benchmark.device import peak_memory_mb, pick_device, seed_everything
from benchmark.io import atomic_path
from benchmark.profiles import Profile, configure, get_profile
from benchmark.provenance import provenance
from benchmark.registry import get_method, get_table
from benchmark.runstore import RunSpec, RunStore
from benchmark.trainer import Trainer
from protocols.evaluate import collect

log = logging.getLogger(__name__)


@dataclass
class TableRun:
    table_id: str
    rows: pd.DataFrame
    failures: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)


@dataclass
class PlannedRun:
    """What one (method, variant, seed) of a table trains and scores on, and its run-store identity."""

    spec: RunSpec
    method_cls: type
    config: object
    train: object  # SliceSet: healthy training slices
    val: object  # SliceSet: healthy validation slices
    test: object  # SliceSet


def plan_run(spec_table, method_name: str, variant: str, seed: int, profile: Profile, store_data) -> PlannedRun:
    """The profile's config and data splits of one run (the same for training it and for reading it back)."""
    cls = get_method(method_name)
    config = configure(cls, profile)
    train = store_data.split("train", label=0)
    val = store_data.split("val", label=0)
    test = store_data.split("test")
    if profile.max_train_slices:
        train = train.take(profile.max_train_slices)
    if profile.max_test_slices:
        test = test.take(profile.max_test_slices)
    run = RunSpec(method_name, variant, config.to_dict(), store_data.fingerprint, spec_table.protocol, seed)
    return PlannedRun(run, cls, config, train, val, test)


def load_trained(plan: PlannedRun, run_store: RunStore, device: torch.device):
    """The finished run's method with its trained weights and calibration (for diagnostics and figures)."""
    path = run_store.model_path(plan.spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model for {plan.spec.method} (run the table first)")
    method = plan.method_cls(plan.config, variant=plan.spec.variant, device=device)
    method.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return method


def run_one(spec_table, method_name: str, variant: str, seed: int, profile: Profile, store_data, run_store: RunStore,
            device: torch.device, progress: bool = True) -> tuple[RunSpec, bool]:
    """Train and evaluate one (method, variant, seed); returns (run spec, ran_now)."""
    plan = plan_run(spec_table, method_name, variant, seed, profile, store_data)
    run, config, train, val, test = plan.spec, plan.config, plan.train, plan.val, plan.test
    if run_store.is_finished(run):
        return run, False
    seed_everything(seed)
    method = plan.method_cls(config, variant=variant, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(device, seed=seed, checkpoint=run_store.checkpoint_path(run), progress=progress)
    t0 = time.perf_counter()
    report = method.fit(train, val, trainer=trainer)
    train_wall = time.perf_counter() - t0
    with atomic_path(run_store.model_path(run)) as tmp:
        torch.save(method.state_dict(), tmp)
    scored_test = collect(method, test, progress=progress)
    scored_val = collect(method, val, progress=progress) if len(val) else None
    rows = spec_table.rows(scored_test, scored_val)
    prov = provenance(device)
    common = {
        "table_id": spec_table.table_id, "method": method_name, "variant": variant, "dataset": spec_table.dataset,
        "seed": seed, "dataset_fingerprint": store_data.fingerprint, "protocol": spec_table.protocol,
        "git_sha": prov["git_sha"], "phbench_version": prov["phbench_version"], "torch": prov["torch"],
        "device": prov["device"], "train_wall_s": round(train_wall, 2), "eval_wall_s": round(scored_test.wall_s, 2),
        "peak_mem_mb": round(peak_memory_mb(device), 1), "config": json.dumps(config.to_dict(), sort_keys=True),
    }
    full = [{**common, **r} for r in rows]
    info = {"provenance": prov, "fit": report, "profile": profile.name, "n_train": len(train), "n_val": len(val),
            "n_test": len(test), "calibration": method.calibration,
            "test_slices_per_s": len(test) / scored_test.wall_s if scored_test.wall_s else None}
    run_store.write_result(run, full, info)
    ckpt = run_store.checkpoint_path(run)
    if ckpt.exists():
        ckpt.unlink()  # the finished model is in model.pt; the resume checkpoint is no longer needed
    return run, True


def run_table(table_id: str, *, profile: str = "default", store: str | Path = "runs", out: str | Path = "out/tables",
              methods: list[str] | None = None, device: str | None = None, seeds: list[int] | None = None,
              progress: bool = True, render: bool = True) -> TableRun:
    spec_table = get_table(table_id)
    if not spec_table.runnable:
        raise NotImplementedError(f"{table_id}: not runnable yet ({spec_table.extra.get('status', 'no protocol')})")
    prof = get_profile(profile)
    dev = pick_device(device)
    run_store = RunStore(Path(store) / profile)
    data = spec_table.store(profile)
    result = TableRun(table_id, pd.DataFrame())
    chosen = [(m, v) for m, v in spec_table.methods if not methods or m in methods]
    keys: list[str] = []
    for method_name, variant in chosen:
        for seed in seeds if seeds is not None else prof.seeds:
            label = f"{method_name}{'/' + variant if variant else ''} seed {seed}"
            try:
                run, ran = run_one(spec_table, method_name, variant, seed, prof, data, run_store, dev, progress)
            except Exception as err:  # one failing run must not lose the others
                log.debug("run failed", exc_info=True)
                result.failures.append(f"{label}: {type(err).__name__}: {err}")
                if log.isEnabledFor(logging.DEBUG):
                    traceback.print_exc()
                continue
            keys.append(run.key)
            (result.ran if ran else result.skipped).append(label)
    frames = [run_store.read_rows(k) for k in keys]
    result.rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if render and not result.rows.empty:
        from protocols.render import render_table

        notes = list(spec_table.footnotes) + _deviation_notes(chosen)
        result.outputs = render_table(result.rows, table_id=table_id, title=f"{spec_table.title} [profile {profile}]",
                                      out_dir=Path(out) / profile, footnotes=notes, paper=None,
                                      expected_methods=[m for m, _ in chosen])
    return result


def _deviation_notes(chosen: list[tuple[str, str]]) -> list[str]:
    notes = []
    for m, _ in dict.fromkeys(chosen):
        try:
            info = get_method(m).info
        except KeyError:
            continue
        for d in info.deviations:
            notes.append(f"{m}: {d}")
    return notes
