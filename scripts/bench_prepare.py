"""Time slice-store preparation on the shared real data: all 1,272 LGG slices and all 36 IXI volumes.

Each store is built from scratch in a temporary cache (``force``), then reopened to time the memory-mapped
read path. Usage: ``python scripts/bench_prepare.py [--data ../shared/data]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.registry import get_dataset  # noqa: E402
from datasets import splits  # noqa: E402
from datasets.base import prepare  # noqa: E402
from datasets.recipes import rule_every_brain_slice  # noqa: E402
from datasets.recipes_paper import LGG_FLAIR, RA_MID_T1  # noqa: E402
from datasets.store import SliceStore  # noqa: E402


def timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    return label, dt, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("PHBENCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--data", type=Path, default=default)
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"{args.data}: shared data folder not found (pass --data)", file=sys.stderr)
        return 2
    lgg = get_dataset("lgg")(args.data / "lgg-mri-segmentation")
    ixi = get_dataset("ixi")(args.data / "ixi")
    # every IXI brain-bearing axial slice: the heaviest per-volume path (head mask, all slices resized)
    ixi_all = dataclasses.replace(RA_MID_T1, name="bench_ixi_every_slice", slice_rule=rule_every_brain_slice(0.05),
                                  norm_scope="volume", quantise_u8=False, boxes="components")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        jobs = [
            ("LGG all 1,272 slices (lgg_flair, every slice)",
             lambda: prepare(lgg, LGG_FLAIR, cache_dir=cache, split_fn=splits.all_as("test"), force=True)),
            ("LGG dev benchmark store (train/val healthy, test all)",
             lambda: prepare(lgg, LGG_FLAIR, cache_dir=cache, split_fn=splits.lgg(), force=True)),
            ("IXI 36 volumes, mid-axial (ra_mid_t1)",
             lambda: prepare(ixi, RA_MID_T1, cache_dir=cache, split_fn=splits.all_as("train"), force=True)),
            ("IXI 36 volumes, every brain slice",
             lambda: prepare(ixi, ixi_all, cache_dir=cache, split_fn=splits.all_as("train"), force=True)),
        ]
        for label, fn in jobs:
            name, dt, store = timed(label, fn)
            t0 = time.perf_counter()
            again = SliceStore(store.path)
            batch = again.all().take(64).batch()
            dt_open = time.perf_counter() - t0
            rows.append((name, len(store), dt, dt_open, int(batch.image.shape[0])))
    print(f"cores available: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.2f}")
    print(f"{'job':<55} {'slices':>7} {'prepare s':>10} {'reopen+64 s':>12}")
    for name, n, dt, dt_open, _ in rows:
        print(f"{name:<55} {n:>7} {dt:>10.1f} {dt_open:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
