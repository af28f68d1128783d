"""Every method's training and scoring throughput per device and dtype, peak memory, and the same against a plain
reference loop in the official codes' style; the JSON that ``phbench estimate`` turns into hours per table.

Why: the paper tables need GPU time; its estimate must come from speeds measured the way the suite runs, and the
suite must not be slower than the loops it replaces. Each (device, dtype, method) row is
``bench_methods.bench_one`` (read its docstring: warm-up, timed ``Trainer.fit`` capped at ``--train-steps``, one
calibration, timed ``score_slices``; slices/s, steps/s, peak memory), with

- ``--dtype``: ``bf16`` = the config as it is (bf16 autocast on CUDA where ``config.amp``); ``fp32`` = ``amp`` off.
  On a CPU the suite's autocast is off by design (``benchmark.device.autocast`` is a no-op there), so a bf16 row
  would time fp32 again: CPUs get fp32 rows only;
- scorers whose chain or search length is a config field (``Method.score_passes`` / ``score_passes_capped``: DDPM,
  AnoDDPM and AutoDDPM steps, AnoGAN's latent search) timed at about ``--score-passes`` passes per slice; the row
  records the passes, and the estimate scales the figure to a run's count. IterMask2's passes depend on the data and
  the trained state: its row records the mean it ran (after a few steps: indicative only);
- the configs of ``--profile`` (default ``paper``: the networks the paper tables train) on the phantom of
  ``--data-profile`` (default ``default``) at ``--size`` px, with a second contrast stored beside each slice (for
  Cyclic-UNet; the others ignore it); the calibration on ``--val-slices`` validation slices.

The reference loop (``--reference``; default ae, ra, anogan): the same built network and batch size, fp32, no
trainer: a torch DataLoader over one ``.npy`` file per slice written to a temporary folder (read from disk at every
step; ``--reference-workers`` loader processes), each batch moved to the device and handed to the method's own
``training_step`` with a plain ``StepContext`` (its first stage); then scoring from the test files through
``Method.score``. The step's arithmetic is the method's own, so the ratio suite / reference isolates what the suite
adds or saves around it (data kept on the device, the shared trainer, bf16 where the suite row is bf16).

``--channels-last`` / ``--compile``: the networks in channels_last memory format / through ``torch.compile``
(rows tagged ``tuning``; the estimate reads untagged rows, the suite as it runs), to see whether the suite should
adopt them on a GPU.

Output: a Markdown table on stdout; ``--json`` writes rows and header (``--update`` keeps the rows of an earlier file
that this run did not measure). The machine may be shared: the 1-min load average is in the header and printed.

``--show FILE`` prints the tables of a written JSON (the README's come from ``results/throughput/cpu.json``).

Usage: python scripts/bench_throughput.py [--methods ae ra ...] [--device cpu cuda] [--dtype bf16 fp32]
       [--profile paper] [--train-steps 5] [--score-slices 16] [--score-passes 4] [--budget-s 20] [--size 128]
       [--reference ae ra anogan] [--reference-workers 0] [--threads 1] [--json results/throughput/cpu.json --update]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

import bench_methods as bm  # noqa: E402  (scripts/ is on the path when this file runs)
from benchmark.contract import DataSpec, SliceBatch, Trainable  # noqa: E402
from benchmark.estimate import score_passes  # noqa: E402
from benchmark.io import atomic_write_text  # noqa: E402
from benchmark.profiles import configure, get_profile  # noqa: E402
from benchmark.registry import all_methods, get_method  # noqa: E402
from benchmark.trainer import StepContext  # noqa: E402

REFERENCE_METHODS = ("ae", "ra", "anogan")
KEY = ("method", "device", "dtype", "size", "profile", "tuning")  # what one row measures (--update replaces by it)


def bench_store(profile: str, modality: str, size: int) -> Any:
    """The phantom of ``profile`` with a second contrast stored beside each slice (``aux``): Cyclic-UNet needs its
    intermediate modality; the other methods ignore it."""
    from datasets import base
    from datasets.phantom import PhantomAdapter, phantom_recipe, phantom_sizes, write_phantom

    other = "t1" if modality == "flair" else "flair"
    plain = phantom_recipe(modality, size)
    recipe = dataclasses.replace(plain, name=f"{plain.name}-aux-{other}", aux_channels=(other,))
    return base.prepare(PhantomAdapter(write_phantom(base.DEFAULT_CACHE / "phantom", **phantom_sizes(profile))),
                        recipe)


def measured_overrides(name: str, variant: str, profile, dtype: str, passes: int) -> tuple[dict[str, Any], float | None]:
    """Config overrides of a timed row (``amp`` off for fp32; capped scoring passes) and the passes they leave."""
    cls = get_method(name)
    config = cls.resolve(configure(cls, profile), variant)
    out: dict[str, Any] = {} if dtype == "bf16" else {"amp": False}
    if passes:
        out.update(cls.score_passes_capped(config, passes))
    return out, score_passes(name, config.replace(**out))


def tuner(channels_last: bool, compile_nets: bool) -> tuple[str, Any]:
    """The ``tuning`` label of the rows and the hook that applies it to a built method's networks (in place):
    channels_last weights (activations follow), ``torch.compile`` (``nn.Module.compile``). The suite itself runs
    neither: these rows say whether it should."""
    label = "+".join(n for n, on in (("channels_last", channels_last), ("compile", compile_nets)) if on)

    def tune(method: Any) -> None:
        for net in method.networks().values():
            if channels_last:
                net.to(memory_format=torch.channels_last)
            if compile_nets:
                net.compile()
    return label, tune if label else None


class SliceFiles(Dataset):
    """One ``.npy`` file per slice (image, brain mask and auxiliary channels stacked), read at every access: the
    official codes' data path."""

    def __init__(self, slices: Any, folder: Path):
        image, brain, _, _, index = slices.materialize("cpu")
        aux = slices.materialize_aux("cpu")
        folder.mkdir(parents=True, exist_ok=True)
        self.channels, self.index = int(image.shape[1]), index
        stacked = torch.cat([image, brain] + ([aux] if aux is not None else []), dim=1).numpy()
        self.files = []
        for i, arr in enumerate(stacked):
            self.files.append(folder / f"{i:06d}.npy")
            np.save(self.files[-1], np.ascontiguousarray(arr, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.load(self.files[i])), self.index[i]

    def batch(self, item: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> SliceBatch:
        x, index = (t.to(device, non_blocking=True) for t in item)
        c = self.channels
        brain = x[:, c:c + 1]
        return SliceBatch(x[:, :c], brain, torch.zeros_like(brain), torch.zeros(len(x), dtype=torch.long,
                          device=device), index, x[:, c + 1:] if x.shape[1] > c + 1 else None)


def endless(loader: DataLoader) -> Iterator[Any]:
    """The loader's batches, epoch after epoch (a new shuffle each)."""
    while True:
        yield from loader


def reference_one(name: str, variant: str, args, profile, store, device: torch.device, steps: int,
                  folder: Path) -> dict[str, Any]:
    """The plain loop's row: ``steps`` timed training steps (after ``--warmup-steps``), then the test slices scored."""
    train, val = store.split("train", label=0), store.split("val", label=0).take(args.val_slices)
    test = store.split("test").take(args.score_slices)
    overrides, passes = measured_overrides(name, variant, profile, "fp32", args.score_passes)
    method = bm.build(name, variant, profile, DataSpec.of(store), device, train, val, args.warmup_steps, args.seed,
                      overrides)
    if not isinstance(method, Trainable):
        raise ValueError(f"{name} has no training steps: no reference loop")
    cfg = method.config
    method.to(device)
    method.on_fit_start(train, None)
    gen = torch.Generator().manual_seed(args.seed)
    ctx = StepContext(method.configure_optimizers(), device, False, stage=method.stages()[0].name,
                      stage_epochs=cfg.epochs, generator=gen, grad_clip_norm=getattr(cfg, "grad_clip_norm", None))
    files = SliceFiles(train, folder / "train")
    loader = DataLoader(files, batch_size=cfg.batch_size, shuffle=True, drop_last=len(files) >= cfg.batch_size,
                        num_workers=args.reference_workers, generator=gen, pin_memory=device.type == "cuda")
    batches = endless(loader)

    def step() -> None:
        method.training_step(files.batch(next(batches), device), ctx)
        ctx.global_step += 1
        ctx.stage_step += 1

    method.train_mode(True)
    for _ in range(args.warmup_steps):
        step()
    bm.reset_peak(device)
    bm.sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    bm.sync(device)
    wall = time.perf_counter() - t0
    row = {"method": name + (f"/{variant}" if variant else ""), "device": str(device), "dtype": "fp32",
           "workers": args.reference_workers, "batch_size": cfg.batch_size, "train_steps": steps,
           "train_sps": steps * cfg.batch_size / wall, "steps_per_s": steps / wall,
           "train_peak_mib": bm.peak_mib(device), "score_passes": passes}
    method.train_mode(False)
    method.calibrate(val)
    tests = SliceFiles(test, folder / "test")
    scoring = DataLoader(tests, batch_size=min(int(cfg.score_batch_size), len(tests)),
                         num_workers=args.reference_workers)
    method.score(tests.batch(next(iter(scoring)), device))  # one warm-up batch, as the suite's row has
    bm.reset_peak(device)
    bm.sync(device)
    t0 = time.perf_counter()
    n = sum(len(method.score(tests.batch(item, device)).image_score) for item in scoring)
    bm.sync(device)
    row.update(score_slices=n, score_sps=n / (time.perf_counter() - t0), score_peak_mib=bm.peak_mib(device))
    return row


def add_reference_ratios(rows: list[dict[str, Any]], refs: list[dict[str, Any]]) -> None:
    """Suite slices/s over the reference loop's, per device and suite dtype (> 1: the suite is faster)."""
    for ref in refs:
        if "error" in ref:
            continue
        for r in rows:
            if r["method"] == ref["method"] and r["device"] == ref["device"] and "error" not in r:
                for k in ("train", "score"):
                    mine, theirs = r.get(f"{k}_sps"), ref.get(f"{k}_sps")
                    ref[f"{k}_suite_{r['dtype']}_x"] = mine / theirs if mine and theirs else None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else bm.cpu_model()


def num(v: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if v is None else format(v, spec) + suffix


def markdown(rows: list[dict[str, Any]], refs: list[dict[str, Any]]) -> str:
    """The throughput table, and the reference-loop table when there is one (GitHub Markdown)."""
    body = []
    for r in rows:
        if "error" in r:
            body.append((r["method"], r["device"], r.get("dtype", ""), r.get("size", ""), "", f"error: {r['error']}",
                         "", "", "", ""))
            continue
        peaks = " / ".join("–" if r.get(k) is None else f"{r[k]:.0f}" for k in ("train_peak_mib", "score_peak_mib"))
        passes = r.get("mean_passes") or r.get("score_passes")
        note = f"{r.get('train_steps') or 0} steps, {r['score_slices']} scored"
        label = r["method"] + (f" [{r['tuning']}]" if r.get("tuning") else "")
        body.append((label, r["device"], r["dtype"], r["size"], f"{r['batch_size']}/{r['score_batch_size']}",
                     num(r.get("train_sps")), num(r.get("steps_per_s"), ".3f"), num(r.get("score_sps")),
                     num(passes, ".3g"), f"{peaks} ({note})"))
    out = tabulate(body, headers=["method", "device", "dtype", "px", "batch", "train sl/s", "steps/s", "score sl/s",
                                  "passes/slice", "peak MiB train/score (timed)"], tablefmt="github",
                   disable_numparse=True)
    if refs:
        ref_rows = [(r["method"], r["device"], r.get("workers", ""), f"error: {r['error']}", "", "", "", "")
                    if "error" in r else
                    (r["method"], r["device"], r["workers"], num(r["train_sps"]),
                     num(r.get("train_suite_fp32_x"), ".2f", "×"), num(r.get("train_suite_bf16_x"), ".2f", "×"),
                     num(r["score_sps"]), num(r.get("score_suite_fp32_x"), ".2f", "×")) for r in refs]
        out += "\n\n" + tabulate(ref_rows, headers=["method", "device", "loader workers", "reference train sl/s",
                                                    "suite fp32 ×", "suite bf16 ×", "reference score sl/s",
                                                    "suite score ×"], tablefmt="github", disable_numparse=True)
    return out


def merged(path: Path, header: dict[str, Any], rows: list[dict[str, Any]], refs: list[dict[str, Any]]) -> dict:
    """This run's rows over an earlier file's (same method, device, dtype, size and profile replaced)."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    key = lambda r: tuple(r.get(k) for k in KEY)  # noqa: E731

    def keep(kind: str, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
        fresh = {key(r) for r in new}
        return [r for r in old.get(kind, []) if key(r) not in fresh] + new

    return {"header": header, "rows": keep("rows", rows), "reference": keep("reference", refs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bm.add_timing_args(ap, tuple(all_methods()))
    ap.set_defaults(profile="paper", train_steps=5, warmup_steps=1, score_slices=16, val_slices=16, budget_s=20.0)
    ap.add_argument("--dtype", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"],
                    help="bf16: the config's amp (bf16 autocast, CUDA only); fp32: amp off")
    ap.add_argument("--data-profile", default="default", help="the phantom's size (default: default)")
    ap.add_argument("--score-passes", type=int, default=4,
                    help="passes per scored slice for chain / search scorers (0: the config's own)")
    ap.add_argument("--reference", nargs="*", default=list(REFERENCE_METHODS),
                    help="methods also timed in the plain reference loop (none: skip it)")
    ap.add_argument("--reference-workers", type=int, default=0, help="DataLoader processes of the reference loop")
    ap.add_argument("--update", action="store_true", help="keep the rows of --json this run does not measure")
    ap.add_argument("--channels-last", action="store_true", help="networks in channels_last memory format (rows "
                                                                 "tagged; the estimate uses untagged rows)")
    ap.add_argument("--compile", action="store_true", help="torch.compile every network (rows tagged)")
    ap.add_argument("--show", type=Path, default=None, help="print the tables of this JSON and stop (no timing)")
    args = ap.parse_args()
    if args.show:
        doc = json.loads(args.show.read_text())
        key = lambda r: (r["device"], r["method"], r.get("dtype", ""), r.get("size", 0))  # noqa: E731
        print(markdown(sorted(doc["rows"], key=key), sorted(doc.get("reference", []), key=key)))
        return 0
    devices = bm.check_timing_args(ap, args)
    profile = get_profile(args.profile)
    store = bench_store(args.data_profile, args.modality, args.size)
    header = bm.machine_header(args, devices, store)
    header.update(data_profile=args.data_profile, dtypes=args.dtype, score_passes=args.score_passes,
                  when=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    t_all = time.perf_counter()
    rows: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    tuning, tune = tuner(args.channels_last, args.compile)
    same = {"size": args.size, "profile": args.profile, "threads": torch.get_num_threads(), "tuning": tuning}

    def save() -> dict[str, Any]:  # after every row: a long run that stops keeps what it measured
        header.update(wall_s=time.perf_counter() - t_all, load_avg_after=os.getloadavg()[0])
        doc = merged(args.json, header, rows, refs) if args.update and args.json else {
            "header": header, "rows": rows, "reference": refs}
        add_reference_ratios(doc["rows"], doc["reference"])  # against the file's suite rows too (--update)
        if args.json:
            atomic_write_text(args.json, json.dumps(doc, indent=2, default=str))
        return doc

    def done(what: str) -> dict[str, Any]:
        print(f"  done {what} ({time.perf_counter() - t_all:.0f} s)", file=sys.stderr, flush=True)
        return {"device_name": device_name(device), "load_avg": os.getloadavg()[0], **same}
    for device in devices:
        dtypes = args.dtype if device.type == "cuda" else ["fp32"]
        if device.type != "cuda" and "bf16" in args.dtype:
            print(f"{device}: bf16 autocast is off on a CPU by design (benchmark.device.autocast): fp32 rows only",
                  file=sys.stderr)
        for spec, dtype in itertools.product(args.methods, dtypes):
            name, _, variant = spec.partition("/")
            overrides, passes = measured_overrides(name, variant, profile, dtype, args.score_passes)
            row = bm.guarded(spec, device, lambda: bm.bench_one(name, variant, args, profile, store, device,
                                                                overrides, tune))
            rows.append({**row, "dtype": dtype, "score_passes": passes, **done(f"{spec} {dtype} on {device}")})
            save()
        for spec in args.reference:
            name, _, variant = spec.partition("/")
            mine = [r for r in rows if r["method"] == spec and r["device"] == str(device) and r.get("train_steps")]
            steps = max((r["train_steps"] for r in mine), default=bm.MIN_TRAIN_STEPS)
            with tempfile.TemporaryDirectory(prefix="phbench-reference-") as tmp:
                ref = bm.guarded(spec, device, lambda: reference_one(name, variant, args, profile, store, device,
                                                                     steps, Path(tmp)))
            refs.append({**ref, "dtype": "fp32", **done(f"reference {spec} on {device}")})
            save()
    save()
    print()
    print(markdown(rows, refs))
    print(f"\nwhole run {header['wall_s']:.0f} s, 1-min load {header['load_avg_before']:.2f} → "
          f"{header['load_avg_after']:.2f}; configs of profile '{args.profile}', phantom '{args.data_profile}' "
          f"{args.size} px; peak MiB: CUDA allocation, or the process's peak RSS on a CPU")
    return 1 if any("error" in r for r in rows + refs) else 0


if __name__ == "__main__":
    sys.exit(main())
