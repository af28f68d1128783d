"""The qualitative figure of a table's trained methods (``phbench figure``).

Why here and not in ``protocols/``: it loads the models a table's runs trained, which needs the runner
(``plan_run``, ``load_trained``) and the profiles; ``protocols.figures`` keeps only the drawing, which
protocols may use without reaching up a layer.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from benchmark.device import pick_device
from benchmark.errors import PhbenchError
from benchmark.folds import Folds
from benchmark.profiles import get_profile
from benchmark.registry import get_table
from benchmark.runner import load_trained, plan_run
from benchmark.runstore import RunStore
from protocols.figures import pick_examples, qualitative_figure

__all__ = ["table_figure"]


def table_figure(table_id: str, *, profile: str = "default", store: str | Path = "runs", out: str | Path,
                 n: int = 4, device: str | None = None, methods: Sequence[str] | None = None,
                 root: str | Path | None = None, skip_bad: bool = False, subset: bool = False) -> list[Path]:
    """The qualitative figure of a table's trained methods (first seed of the profile) on ``n`` test slices.

    Reads the models the table's runs trained (``phbench table`` first); a method without a trained model is
    left out with a warning, and no trained model at all is an error naming the run store.
    """
    spec, prof = get_table(table_id), get_profile(profile)
    data = spec.all_parts[0].store(prof.data_name, None if root is None else Path(root), skip_bad=skip_bad,
                                   subset=subset)  # first part
    if isinstance(data, Folds):
        raise PhbenchError(f"{table_id}: its first column is cross-validated ({len(data.stores)} folds, one model "
                           "each); figures show one model's slices: not supported for such a column yet")
    run_store = RunStore(Path(store) / profile)
    dev = pick_device(device)
    outputs: dict[str, dict[str, Any]] = {}
    positions: list[int] | None = None
    images = gts = None
    titles: list[str] = []
    for name, variant in spec.methods:
        if methods and name not in methods:
            continue
        plan = plan_run(spec, name, variant, prof.seeds[0], prof, data, spec.all_parts[0].overrides)
        if positions is None:
            area = np.asarray(plan.test.store.lesion[plan.test.rows]).reshape(len(plan.test), -1).sum(1, dtype=np.int64)
            positions = pick_examples(plan.test.manifest, area, n)
            man = plan.test.manifest.iloc[positions]
            titles = [f"{s}\n{p} z{z}" for s, p, z in zip(man["subject"], man["pathology"], man["slice"])]
        try:
            method = load_trained(plan, run_store, dev)
        except FileNotFoundError as err:
            warnings.warn(f"{name}: left out of the figure ({err})", RuntimeWarning, stacklevel=2)
            continue
        batch = plan.test.batch(positions, device=dev)
        with torch.no_grad():
            res = method.score(batch)
        images, gts = batch.image, batch.lesion_mask
        label = name + (f" ({variant})" if variant else "")
        outputs[label] = {"reconstruction": res.reconstruction, "anomaly_map": res.anomaly_map}
    if not outputs:
        raise FileNotFoundError(f"{Path(store) / profile}: no trained model for {table_id} "
                                f"(run `phbench table {table_id} --profile {profile}` first)")
    return qualitative_figure(images, gts, outputs, out, row_titles=titles)
