"""Where does a method's localisation come from? Re-score a table's finished runs and compare, on the same
test slices, the pooled pixel AUROC/AP of

- ``map``: the method's own anomaly map (what the table reports),
- ``residual``: the plain |x − x̂| of its pseudo-healthy reconstruction (when it returns one),
- ``intensity``: the input image itself, no model at all (FLAIR/T2 lesions are the brightest tissue, so a
  method must beat this to show it learned anything about normal anatomy),

over all pixels (the table's protocol) and inside the brain/head mask. Reads ``runs/<profile>``; trains
nothing. Usage: ``python scripts/diagnose_maps.py lgg-dev --profile default``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tabulate import tabulate

from benchmark.device import pick_device
from benchmark.profiles import get_profile
from benchmark.registry import get_table
from benchmark.runner import load_trained, plan_run
from benchmark.runstore import RunStore
from protocols import metrics as M
from protocols.evaluate import collect

REPO = Path(__file__).resolve().parent.parent


def _scores(name: str, maps: torch.Tensor, lesion: torch.Tensor, brain: torch.Tensor) -> list:
    all_px = M.pooled_pixel_auroc_ap(maps, lesion)
    in_brain = M.pooled_pixel_auroc_ap(maps, lesion, valid=brain > 0.5)
    return [name, *(round(v, 3) for v in (*all_px, *in_brain))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table_id")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--store", default=str(REPO / "runs"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    spec = get_table(args.table_id)
    profile = get_profile(args.profile)
    data = spec.all_parts[0].store(profile.data_name, None)
    device = pick_device(args.device)
    store = RunStore(Path(args.store) / profile.name)
    rows, test = [], None
    for method_name, variant in spec.methods:
        plan = plan_run(spec, method_name, variant, args.seed, profile, data, spec.all_parts[0].overrides)
        method = load_trained(plan, store, device)
        test = collect(method, plan.test, progress=False)
        label = method_name + (f" [{variant}]" if variant else "")
        rows.append(_scores(f"{label}: map", test.maps, test.lesion, test.brain))
        if test.reconstructions is not None:
            residual = (test.images - test.reconstructions).abs().mean(1, keepdim=True)
            rows.append(_scores(f"{label}: |x - x̂|", residual, test.lesion, test.brain))
    if test is not None:
        rows.append(_scores("intensity x (no model)", test.images.mean(1, keepdim=True), test.lesion, test.brain))
    print(tabulate(rows, headers=["map", "AUROC all px", "AP all px", "AUROC in mask", "AP in mask"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
