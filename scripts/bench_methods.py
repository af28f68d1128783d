"""Time every registered method's training and scoring throughput (slices/s) on the phantom, relative to ``ae``.

Why: the RA issue's closing note and later GPU runs need each method's cost next to the plain autoencoder's,
measured the way the suite runs it. Each method (default variant, or ``name/variant``) is configured with a
profile (``default``), built through the contract (``Method.build`` with a ``DataSpec`` from the store), and

- trained with its batch size, optimisers and bf16 autocast (``config.amp``, CUDA only) on the store's healthy
  training split: first ``--warmup-steps`` untimed steps through the method's own ``learn`` (which also fits
  what the method learns outside the loop, e.g. PHANES's τ_train or MKD's teacher flag; validation on a few
  slices), then a fresh ``Trainer.fit`` (the shared loop, no validation) capped at ``--train-steps``
  optimiser steps by ``config.max_steps``, timed between CUDA synchronises: train slices/s = steps × batch
  size / wall time (the fit's optimiser set-up included; the notes add the slices/s of the median loop
  iteration, robust to a busy neighbour on a shared machine). A training-free method reports n/a; one that
  only builds a bank (a ``learn`` override without ``Trainable``: a feature bank, a coreset) is timed
  learning from ``--bank-slices`` training slices, after an untimed learn from 8 (bank and coreset costs grow
  with their size: compare at equal counts);
- calibrated on the healthy validation split (untimed, as the runner does before scoring);
- scored with ``benchmark.scoring.score_slices`` at its ``score_batch_size`` over ``--score-slices`` test
  slices (spread over the split: healthy and lesioned), after one untimed warm-up batch.

``--budget-s`` keeps the run short on a CPU: when the warm-up says the timed steps (score batches) would take
longer, fewer are timed (at least 3 steps, one score batch); the notes column says how many ran.
Iterative scorers (itermask2) run as many passes as a slice needs, so their scoring speed depends on the
trained state: after a few steps it is indicative only (the mean pass count is shown where a method reports
``n_passes``). Upstream methods (PHANES's RA) are built and trained for the warm-up steps only: their speed
does not depend on their weights.
The machine may be shared: the 1-min load average is printed before and after. Peak memory: CUDA's peak allocation,
or on a CPU the process's peak resident set (Linux VmHWM, reset before training and before scoring: the whole process,
the store and the libraries included).

``scripts/bench_throughput.py`` builds on this file: dtypes, a plain reference loop, steps/s, and the JSON that
``phbench estimate`` turns into hours per table.

Usage: python scripts/bench_methods.py [--methods ae ae-s vae ...] [--device cpu|cuda ...] [--train-steps 20]
       [--score-slices 64] [--budget-s 10] [--size 128] [--modality t1] [--threads K] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmark.contract import DataSpec, Method, Trainable  # noqa: E402
from benchmark.device import pick_device, seed_everything  # noqa: E402
from benchmark.profiles import PROFILES, configure, get_profile  # noqa: E402
from benchmark.provenance import provenance  # noqa: E402
from benchmark.registry import get_method  # noqa: E402
from benchmark.scoring import score_slices  # noqa: E402
from benchmark.trainer import Trainer  # noqa: E402
from datasets.phantom import phantom_store  # noqa: E402

DEFAULT_METHODS = ("ae", "ae-s", "vae", "dae", "mkd", "si-vae", "ra", "itermask2", "intensity")
REFERENCE = "ae"
MIN_TRAIN_STEPS = 3  # timed steps even when the warm-up says they exceed --budget-s
LEARN_VAL = 8  # validation slices handed to the untimed warm-up learn (early stopping, thresholds fitted in learn)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(device: torch.device) -> float | None:
    """Peak CUDA memory allocated by tensors, or on a CPU the process's peak resident set (VmHWM: the whole process,
    store and libraries included) since the last :func:`reset_peak`; None where neither can be read."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak(device: torch.device) -> None:
    """Start a new peak: CUDA's statistics, or on Linux the process's VmHWM (``/proc/self/clear_refs`` 5)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def with_budget(method: Method, steps: int, n_train: int) -> None:
    """Cap every stage at ``steps`` optimiser steps (``config.max_steps``, and a stage's own budget: f-AnoGAN's
    encoder stage counts its own epochs); the profile's epochs stay unless they hold fewer steps, so per-epoch hooks
    behave as in a real run."""
    per_epoch = max(1, n_train // method.config.batch_size)
    epochs = max(int(method.config.epochs), math.ceil(steps / per_epoch))
    method.config = method.config.replace(max_steps=steps, epochs=epochs)
    if isinstance(method, Trainable):
        own = type(method).stages  # the class's stages, not an earlier cap's
        method.stages = lambda: [dataclasses.replace(st, max_steps=min(st.max_steps or steps, steps))  # type: ignore
                                 for st in own(method)]


def build(name: str, variant: str, profile, data: DataSpec, device: torch.device, train, val, warmup: int,
          seed: int, overrides: dict[str, Any] | None = None) -> Method:
    """The method as the runner builds it (profile config, upstream overrides, variant resolved; upstreams
    first, each fitted for ``warmup`` steps: enough to time the method built on it), on ``device``."""
    cls = get_method(name)
    config = cls.resolve(configure(cls, profile, **(overrides or {})), variant)
    upstream = {}
    for key, up in cls.upstreams(config).items():
        m = build(up.method, up.variant, profile, data, device, train, val, warmup, seed, dict(up.overrides))
        if isinstance(m, Trainable):
            with_budget(m, max(warmup, 1), len(train))
        m.learn(train, val.take(LEARN_VAL), trainer=Trainer(device, seed=seed, progress=False))
        m.calibrate(val)
        upstream[key] = m
    seed_everything(seed)  # before construction: initial weights come from the seeded RNG
    return cls.build(config, variant=variant, device=device, data=data, upstream=upstream or None)


def stamped_run(method: Method, device: torch.device, fit: Callable[[Method], Any]) -> tuple[Any, float, list[float]]:
    """``fit(method)`` timed between synchronises: its result, wall seconds and the sorted durations of the training
    loop's iterations (start of one ``training_step`` call to the next; the last one to the end of ``fit``)."""
    starts: list[float] = []
    inner = method.training_step

    def stamped(batch, step):  # the trainer calls method.training_step once per loop iteration
        starts.append(time.perf_counter())
        return inner(batch, step)

    method.training_step = stamped  # type: ignore[method-assign]
    sync(device)
    t0 = time.perf_counter()
    try:
        out = fit(method)
        sync(device)
        wall = time.perf_counter() - t0
    finally:
        del method.training_step
    return out, wall, sorted(b - a for a, b in zip(starts, starts[1:] + [t0 + wall]))


def budgeted(most: int, unit_s: float, budget_s: float, least: int) -> int:
    """How many units (steps, score batches) to time: ``most``, or fewer (not under ``least``) when ``unit_s``,
    the untimed warm-up's seconds per unit, says they would take over ``budget_s``."""
    if budget_s <= 0 or unit_s <= 0:
        return most
    return max(min(least, most), min(most, int(budget_s / unit_s)))


def bench_one(name: str, variant: str, args, profile, store, device: torch.device,
              overrides: dict[str, Any] | None = None, tune: Callable[[Method], None] | None = None) -> dict[str, Any]:
    """One method's row; ``overrides``: config fields set after the profile's (``amp``, fewer scoring passes);
    ``tune``: called on the built method before anything runs (channels_last, torch.compile)."""
    train = store.split("train", label=0)
    val = store.split("val", label=0)
    if args.val_slices:
        val = val.take(args.val_slices)  # the calibration's slices (untimed, but an iterative scorer's take long)
    test = store.split("test").take(args.score_slices)  # spread over the split: healthy and lesioned
    data = DataSpec.of(store)
    method = build(name, variant, profile, data, device, train, val, args.warmup_steps, args.seed, overrides)
    if tune is not None:
        tune(method)
    cfg = method.config
    row: dict[str, Any] = {"method": name + (f"/{variant}" if variant else ""), "device": str(device),
                           "batch_size": cfg.batch_size, "score_batch_size": cfg.score_batch_size,
                           "amp": bool(cfg.amp and device.type == "cuda")}
    trainer = Trainer(device, seed=args.seed, progress=False)
    if isinstance(method, Trainable):
        # warm-up through the method's own learn (what it fits before or after the loop, e.g. a threshold or a
        # teacher flag; validation on a few slices only), then the timed loop: a fresh fit of the shared trainer
        with_budget(method, args.warmup_steps, len(train))
        _, _, warm = stamped_run(method, device, lambda m: m.learn(train, val.take(LEARN_VAL), trainer=trainer))
        steps = budgeted(args.train_steps, min(warm, default=0.0), args.budget_s, MIN_TRAIN_STEPS)
        with_budget(method, steps, len(train))
        reset_peak(device)
        report, wall, gaps = stamped_run(method, device, lambda m: trainer.fit(m, train, None))
        steps = int(report["steps"])
        per_step = min(cfg.batch_size, len(train))  # a training set smaller than the batch is one short batch
        row.update(train_steps=steps, train_slices=steps * per_step, train_s=wall,
                   train_sps=steps * per_step / wall, steps_per_s=steps / wall,
                   trainer_sps=report.get("train_slices_per_s"),
                   train_sps_median_step=per_step / gaps[len(gaps) // 2] if gaps else None,
                   train_peak_mib=peak_mib(device))
    elif type(method).learn is not Method.learn:  # a bank or coreset: one learn over --bank-slices slices
        if args.warmup_steps:
            method.learn(train.take(min(8, len(train))), None, trainer=trainer)  # loads trunks, warms kernels
        bank = train.take(args.bank_slices)
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        method.learn(bank, None, trainer=trainer)
        sync(device)
        wall = time.perf_counter() - t0
        row.update(train_steps=0, train_slices=len(bank), train_s=wall, train_sps=len(bank) / wall,
                   train_peak_mib=peak_mib(device))
    else:
        method.learn(train, None, trainer=trainer)
        row.update(train_sps=None, train_peak_mib=None)
    method.to(device)

    t0 = time.perf_counter()
    method.calibrate(val)  # untimed in the throughput: the runner calibrates once per scoring configuration
    row.update(calibrate_s=time.perf_counter() - t0, calibrate_slices=len(val))

    sbs = min(int(cfg.score_batch_size), args.score_slices)
    sync(device)
    t0 = time.perf_counter()
    method.score(test.take(sbs).batch(device=device))  # warm-up batch (lazy helpers, kernel and primitive caches)
    sync(device)
    n = budgeted(args.score_slices // sbs, time.perf_counter() - t0, args.budget_s, 1) * sbs
    n = args.score_slices if n >= args.score_slices - args.score_slices % sbs else n
    reset_peak(device)
    scores = score_slices(method, test.take(n), progress=False)  # synchronises before its clock on CUDA
    row.update(score_slices=len(scores), score_s=scores.wall_s, score_sps=len(scores) / scores.wall_s,
               score_peak_mib=peak_mib(device))
    if "n_passes" in scores.extras:
        row["mean_passes"] = float(scores.extras["n_passes"].float().mean())
    peaks = [p for p in (row.get("train_peak_mib"), row["score_peak_mib"]) if p is not None]
    row["peak_mib"] = max(peaks) if peaks else None
    del method, scores
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def guarded(spec: str, device: torch.device, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s row, or an error row: one failing method (missing weights, OOM) must not hide the others."""
    try:
        return run()
    except Exception as e:
        traceback.print_exc()
        return {"method": spec, "device": str(device), "error": f"{type(e).__name__}: {e}"}
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Train and score slices/s over the reference method's, per device."""
    for dev in {r["device"] for r in rows}:
        ref = next((r for r in rows if r["device"] == dev and r["method"] == REFERENCE and "error" not in r), None)
        for r in rows:
            if r["device"] != dev or "error" in r:
                continue
            for k in ("train", "score"):
                mine, theirs = r.get(f"{k}_sps"), None if ref is None else ref.get(f"{k}_sps")
                r[f"{k}_vs_{REFERENCE}"] = mine / theirs if (mine and theirs) else None


def fmt(v: float | None, spec: str, width: int, suffix: str = "") -> str:
    return f"{'n/a' if v is None else format(v, spec) + suffix:>{width}}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'method':<12} {'device':<7} {'batch':>6} {'train sl/s':>11} {'× ' + REFERENCE:>7} "
            f"{'score sl/s':>11} {'× ' + REFERENCE:>7} {'peak MiB':>9}  notes")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['method']:<12} {r['device']:<7} error: {r['error']}")
            continue
        notes = []
        if r.get("train_steps"):
            notes.append(f"{r['train_steps']} steps in {r['train_s']:.1f} s "
                         f"(median step {r['train_sps_median_step']:.1f} sl/s)")
        elif r.get("train_slices"):
            notes.append(f"bank of {r['train_slices']} slices in {r['train_s']:.1f} s")
        notes.append(f"{r['score_slices']} slices in {r['score_s']:.1f} s")
        if "mean_passes" in r:
            notes.append(f"{r['mean_passes']:.1f} passes/slice")
        batch = f"{r['batch_size']}/{r['score_batch_size']}"
        print(f"{r['method']:<12} {r['device']:<7} {batch:>6} {fmt(r['train_sps'], '.2f', 11)} "
              f"{fmt(r.get(f'train_vs_{REFERENCE}'), '.2f', 7, '×')} {fmt(r['score_sps'], '.2f', 11)} "
              f"{fmt(r.get(f'score_vs_{REFERENCE}'), '.2f', 7, '×')} {fmt(r['peak_mib'], '.0f', 9)}  "
              f"{'; '.join(notes)}")


def add_timing_args(ap: argparse.ArgumentParser, methods: tuple[str, ...]) -> None:
    """The options of one timing run (methods, devices, budgets, data, threads, JSON), shared with
    ``bench_throughput.py``."""
    ap.add_argument("--methods", nargs="*", default=list(methods), help="names, or name/variant")
    ap.add_argument("--device", nargs="+", default=None, help="cpu and/or cuda (default: CUDA when present)")
    ap.add_argument("--profile", default="default", choices=sorted(PROFILES),
                    help="method configs and phantom size (default: default)")
    ap.add_argument("--train-steps", type=int, default=20, help="timed optimiser steps per method (at most)")
    ap.add_argument("--warmup-steps", type=int, default=2, help="untimed optimiser steps before them")
    ap.add_argument("--score-slices", type=int, default=64, help="timed test slices per method (at most)")
    ap.add_argument("--val-slices", type=int, default=None,
                    help="validation slices the untimed calibration runs on (default: all)")
    ap.add_argument("--bank-slices", type=int, default=64,
                    help="training slices a bank method (learn without gradient steps) is timed on")
    ap.add_argument("--budget-s", type=float, default=10.0,
                    help="time fewer steps / score batches (at least 3 steps, one batch) when the warm-up says "
                         "--train-steps / --score-slices would take longer than this; 0: always the full counts")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--modality", default="t1", choices=("t1", "t2", "flair"))
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows and the header here")


def check_timing_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[torch.device]:
    """Refuse impossible counts, set the threads; the devices asked for."""
    if min(args.train_steps, args.score_slices, args.bank_slices) < 1 or args.warmup_steps < 0:
        ap.error("--train-steps, --score-slices and --bank-slices must be ≥ 1, --warmup-steps ≥ 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    return [pick_device(d) for d in (args.device or [None])]


def machine_header(args: argparse.Namespace, devices: list[torch.device], store) -> dict[str, Any]:
    """What ran where: torch, threads, CPU and GPU, the load, the data and the budgets (printed and in the JSON)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    header = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model(), "cores": cores,
              "gpu": torch.cuda.get_device_name() if any(d.type == "cuda" for d in devices) else None,
              "load_avg_before": os.getloadavg()[0], "profile": args.profile, "modality": args.modality,
              "size": args.size, "store": str(store.path), "n_train": len(store.split("train", label=0)),
              "n_test": len(store.split("test")), "train_steps": args.train_steps,
              "warmup_steps": args.warmup_steps, "score_slices": args.score_slices, "budget_s": args.budget_s,
              "bank_slices": args.bank_slices,
              "provenance": provenance(devices[0])}
    print(f"torch {header['torch']}, {header['threads']} threads, CPU {header['cpu']} ({cores} usable cores, "
          f"1-min load {header['load_avg_before']:.2f})" + (f", GPU {header['gpu']}" if header["gpu"] else ""))
    return header


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_args(ap, DEFAULT_METHODS)
    args = ap.parse_args()
    devices = check_timing_args(ap, args)
    profile = get_profile(args.profile)

    t_all = time.perf_counter()
    store = phantom_store(profile.data_name, modality=args.modality, size=args.size)
    header = machine_header(args, devices, store)
    print(f"phantom '{args.profile}' {args.modality} {args.size} px: {header['n_train']} train / "
          f"{header['n_test']} test slices; per method {args.warmup_steps} warm-up + ≤ {args.train_steps} timed "
          f"training steps, one warm-up batch + ≤ {args.score_slices} timed test slices (fewer past "
          f"{args.budget_s:g} s: see notes); bf16 autocast on CUDA where config.amp")

    rows: list[dict[str, Any]] = []
    for device in devices:
        for spec in args.methods:
            name, _, variant = spec.partition("/")
            rows.append(guarded(spec, device, lambda: bench_one(name, variant, args, profile, store, device)))
            print(f"  done {spec} on {device} ({time.perf_counter() - t_all:.0f} s)", file=sys.stderr, flush=True)
    add_ratios(rows)
    header["wall_s"] = time.perf_counter() - t_all
    header["load_avg_after"] = os.getloadavg()[0]
    print()
    print_table(rows)
    print(f"\nwhole run {header['wall_s']:.0f} s (1-min load {header['load_avg_after']:.2f} at the end); ratios are "
          f"slices/s over {REFERENCE}'s on the same device (> 1 = faster)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=2, default=str))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
