"""Qualitative figure: rows = examples; columns = input, ground truth, then per method its pseudo-healthy
reconstruction and anomaly map. Saved as PNG and PDF (matplotlib Agg, no display needed).

Why a fixed layout: the papers' qualitative figures differ, and a shared one lets readers compare methods
on the same slices. Each method's maps share one colour scale across rows (its 99th percentile by
default), so a method's weak map is not stretched to look strong.

Only the drawing lives here; loading a table's trained models for the figure is runner work
(``benchmark.figures.table_figure``), kept out of ``protocols`` so this layer never imports the runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from benchmark.io import atomic_path

__all__ = ["qualitative_figure", "pick_examples"]


def _np(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    a = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    if a.ndim == 4:
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"expected [K,1,H,W] or [K,H,W], got {a.shape}")
    return a


def qualitative_figure(images: Any, gts: Any, outputs: Mapping[str, Mapping[str, Any]], out_path: str | Path, *,
                       row_titles: Sequence[str] | None = None, map_vmax: str | float = "p99",
                       formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Draw and save the figure; returns the written paths (``out_path`` with each suffix).

    ``outputs[method] = {"reconstruction": [K,1,H,W] or None, "anomaly_map": [K,1,H,W]}``; a missing
    reconstruction prints "n/a". ``map_vmax``: "p99" (per method, over its shown maps), "max", or a number.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x = _np(images)
    g = _np(gts)
    k = x.shape[0]
    methods = list(outputs)
    ncols = 2 + 2 * len(methods)
    fig, axes = plt.subplots(k, ncols, figsize=(1.6 * ncols, 1.6 * k + 0.4), squeeze=False)
    titles = ["input", "ground truth"] + [f"{m}\n{w}" for m in methods for w in ("reconstruction", "anomaly map")]
    for j, t in enumerate(titles):
        axes[0, j].set_title(t, fontsize=7)
    vmaxes = {}
    for m in methods:
        am = _np(outputs[m].get("anomaly_map"))
        if am is None:
            vmaxes[m] = 1.0
        elif map_vmax == "p99":
            vmaxes[m] = float(np.percentile(am, 99)) or 1.0
        elif map_vmax == "max":
            vmaxes[m] = float(am.max()) or 1.0
        else:
            vmaxes[m] = float(map_vmax)
    for i in range(k):
        axes[i, 0].imshow(x[i], cmap="gray")
        axes[i, 1].imshow(x[i], cmap="gray")
        if g is not None and g[i].any():
            axes[i, 1].contour(g[i] > 0.5, levels=[0.5], colors="r", linewidths=0.6)
        for mi, m in enumerate(methods):
            rec = _np(outputs[m].get("reconstruction"))
            am = _np(outputs[m].get("anomaly_map"))
            ar, aa = axes[i, 2 + 2 * mi], axes[i, 3 + 2 * mi]
            if rec is None:
                ar.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=7, transform=ar.transAxes)
            else:
                ar.imshow(rec[i], cmap="gray")
            if am is not None:
                aa.imshow(am[i], cmap="inferno", vmin=0.0, vmax=vmaxes[m])
        if row_titles is not None and i < len(row_titles):
            axes[i, 0].set_ylabel(str(row_titles[i]), fontsize=6)
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout(pad=0.3)
    out = Path(out_path)
    written = []
    for fmt in formats:
        target = out.with_suffix("." + fmt)
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
        written.append(target)
    plt.close(fig)
    return written


def pick_examples(manifest, lesion_area: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` test slices to show: the largest lesion of each subject, pathologies taken in turn so
    every kind of anomaly appears before any repeats; healthy test sets fall back to evenly spaced slices."""
    lesion_area = np.asarray(lesion_area, dtype=np.float64)
    has = np.flatnonzero(lesion_area > 0)
    if not has.size:
        return np.linspace(0, len(manifest) - 1, min(n, len(manifest))).round().astype(int).tolist()
    best: dict[str, int] = {}
    for i in has:
        s = str(manifest["subject"].iloc[i])
        if s not in best or lesion_area[i] > lesion_area[best[s]]:
            best[s] = int(i)
    by_path: dict[str, list[int]] = {}
    for i in sorted(best.values(), key=lambda i: -lesion_area[i]):
        by_path.setdefault(str(manifest["pathology"].iloc[i]), []).append(i)
    picked: list[int] = []
    while len(picked) < n and any(by_path.values()):
        for queue in by_path.values():
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked

