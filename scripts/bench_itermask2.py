"""Time IterMask2's iterative inference before/after the scoring speed-up (issue 17), and check it changes nothing.

Why: scoring IterMask2 runs f2 ~16 times per slice, which made it the slowest scorer of ``./reproduce.sh table1``
in the default profile. The model is the one ``table1`` trains (default profile, 128-px FLAIR phantom, seed 0):
read from the run store ``--store`` (``runs/`` like the CLI) or trained there first (minutes on 2 cores).
Each mode scores the same test slices (``--slices``, spread over the split like ``SliceSet.take``; 0 = all 288)
with ``benchmark.scoring.score_slices`` at the config's ``score_batch_size``:

- ``before``: the code before issue 17 -- the trained modules in the contiguous (NCHW) format they had before
  IterMask2 v3 (``score_networks="plain"``), each score batch of 32 slices in one call per pass;
- ``fast``: the defaults -- ``methods.blocks.unet.inference_copy`` of f1 and f2 (channels-last, 4-D attention,
  BatchNorm folded, in-place activations, up blocks' first conv as one transposed conv, 1×1 convs through
  oneDNN), ``score_chunk`` slices per network call (CPU: 4, ``--chunk`` sets it) on one single-threaded worker
  per torch thread, score batches of ``score_batch_size`` (256) slices.

The process keeps freed memory in its heap like the CLI (``benchmark.device.retain_cpu_heap``) unless
``--malloc default``; that setting holds for both modes, so the code before issue 17 ran with ``default``.

Modes alternate within each repeat, so a busy neighbour slows them alike; the best of ``--repeats`` wall times is
compared, next to the process CPU time and the 1-minute load average (the machine may be shared). With a subset,
the full-set time is extrapolated per slice and labelled so. Every mode's final masks and pass counts must equal
``before``'s, and its maps match within 1e-5 (the script exits 1 otherwise).

Usage: .venv/bin/python scripts/bench_itermask2.py [--slices 64] [--repeats 3] [--store runs] [--threads N]
       [--chunk N] [--malloc retain|default]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from benchmark.device import retain_cpu_heap  # noqa: E402
from benchmark.models import ModelStore, obtain  # noqa: E402
from benchmark.profiles import get_profile  # noqa: E402
from benchmark.registry import get_table  # noqa: E402
from benchmark.runner import plan_run, planned_runs  # noqa: E402
from benchmark.scoring import Scores, score_slices  # noqa: E402
from methods.itermask2 import IterMask2  # noqa: E402

MODES = {"before": {"score_networks": "plain", "score_chunk": 0, "score_batch_size": 32}, "fast": {}}
MAP_ATOL = 1e-5


def table1_model(store: Path, device: torch.device) -> tuple[IterMask2, object]:
    """``table1``'s IterMask2 (default profile, seed 0) and its test slices, trained into ``store`` if missing."""
    spec, profile = get_table("table1"), get_profile("default")
    part, name, variant, seed, data, _ = next(planned_runs(spec, "default", methods=["itermask2"]))
    plan = plan_run(spec, name, variant, seed, profile, data)
    models = ModelStore(store / "default")  # the CLI's run store of the default profile: table1's own model
    if not models.is_trained(plan.model):
        print(f"training table1's itermask2 into {store / 'default'} (minutes on 2 cores)", flush=True)
    got = obtain(plan.model, plan.train, plan.val, models, device, progress=False)
    return got.method, plan.test


def variant_of(method: IterMask2, **runtime_fields) -> IterMask2:
    """The same trained and calibrated model under other runtime fields (they change no trained number)."""
    out = IterMask2(method.config.replace(**runtime_fields), data=method.data, device=method.device)
    out.load_state_dict(method.state_dict())
    return out


def in_nchw(method: IterMask2) -> IterMask2:
    """``method`` with its networks back in the contiguous (NCHW) format they had before IterMask2 v3."""
    for net in method.networks().values():
        net.to(memory_format=torch.contiguous_format)
    return method


def compare(ref: Scores, got: Scores) -> dict[str, object]:
    return {"masks equal": torch.equal(ref.extras["final_mask"], got.extras["final_mask"]),
            "passes equal": torch.equal(ref.extras["n_passes"], got.extras["n_passes"]),
            "max |Δ map|": float((ref.anomaly_map - got.anomaly_map).abs().max())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=64, help="test slices to score (0: all)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per mode (the best is compared)")
    ap.add_argument("--store", default=str(Path(__file__).resolve().parents[1] / "runs"),
                    help="run store with table1's default-profile models (default: runs/)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--chunk", type=int, default=None, help="score_chunk of the fast modes (default: the config's)")
    ap.add_argument("--malloc", choices=("retain", "default"), default="retain",
                    help="retain: keep freed memory in the heap, as the CLI does; default: glibc's own settings")
    args = ap.parse_args()
    heap = "retained" if args.malloc == "retain" and retain_cpu_heap() else "glibc default"
    if args.threads:
        torch.set_num_threads(args.threads)
    method, test = table1_model(Path(args.store), torch.device("cpu"))
    n_all = len(test)
    if 0 < args.slices < n_all:
        test = test.take(args.slices)
    runs = {m: variant_of(method, **kw) for m, kw in MODES.items()}
    in_nchw(runs["before"])
    if args.chunk is not None:
        runs["fast"] = variant_of(method, **MODES["fast"], score_chunk=args.chunk)
    walls: dict[str, list[float]] = {m: [] for m in MODES}
    cpus: dict[str, list[float]] = {m: [] for m in MODES}
    scores: dict[str, Scores] = {}
    loads = [os.getloadavg()[0]]
    print(f"{len(test)} of {n_all} test slices, {torch.get_num_threads()} threads, fast: {runs['fast']._score_chunk()} "
          f"slices per network call, τ = {method.calibration['tau']:.5f}, heap: {heap}", flush=True)
    for r in range(args.repeats):
        for m in MODES:
            c0, t0 = time.process_time(), time.perf_counter()
            scores[m] = score_slices(runs[m], test, progress=False)
            walls[m].append(time.perf_counter() - t0)
            cpus[m].append(time.process_time() - c0)
            print(f"  repeat {r + 1} {m}: {walls[m][-1]:.1f} s wall, {cpus[m][-1]:.1f} s CPU, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    loads.append(os.getloadavg()[0])
    passes = float(scores["before"].extras["n_passes"].sum())
    best_before = min(walls["before"])
    rows, ok = [], True
    for m in MODES:
        best = min(walls[m])
        row = {"mode": m, "best wall s": round(best, 1), "median wall s": round(sorted(walls[m])[len(walls[m]) // 2], 1),
               "best CPU s": round(min(cpus[m]), 1), "ms / slice-pass": round(1e3 * best / passes, 1),
               f"{n_all} slices s" + ("" if len(test) == n_all else " (extrapolated)"): round(best * n_all / len(test), 1),
               "speed-up": round(best_before / best, 2)}
        if m != "before":
            same = compare(scores["before"], scores[m])
            ok &= bool(same["masks equal"] and same["passes equal"] and same["max |Δ map|"] <= MAP_ATOL)
            row.update(same)
        rows.append(row)
    print(tabulate(rows, headers="keys"))
    print(f"{passes:.0f} f2 slice-passes ({passes / len(test):.1f} per slice); load average (1 min) "
          f"{loads[0]:.2f} at start, {loads[1]:.2f} at end on {os.cpu_count()} CPUs")
    if not ok:
        print(f"MISMATCH: masks, pass counts or maps (> {MAP_ATOL}) differ from 'before'")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
