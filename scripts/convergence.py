"""Has each method converged within its budget? (issue 21) The training curves of a table's trained models.

A profile's default budget should sit where a method's validation loss flattens. This reads the per-epoch history
that train.json keeps (``fit.history``) for every model of a table's runs in a run store and prints, per model, the
validation loss (or, for a method without one, its main training loss, labelled ``train:<name>``) at ~10 evenly
spaced epochs, the relative change over the last quarter of its last stage (of all stages when that one ran < 4
epochs): (mean of the last quarter − mean of the quarter before) / |mean of the quarter before|, and a
verdict: ``flat`` (|change| < 2 %), ``still falling`` or ``rising``; and the epoch where the curve flattens by the
rule the default budgets follow: the first epoch whose loss is within ``--within`` (20 %) of the curve's lowest.
On a run trained longer than its budget (``configure(cls, profile, epochs=N)``) that epoch is the budget to choose;
on a curve still falling it is only a lower bound. Models trained before train.json kept the history get a line
saying so.

Usage (after ``python -m benchmark table table1 --store runs``):
``python scripts/convergence.py --store runs --table table1 [--profile default] [--methods ae ...] [--csv PATH]
[--plot PATH.png]``. ``--longer ae:20 ra:6`` first trains the table's model of each method for that many epochs
into ``--store`` (a scratch store: the models differ from the table's by their epoch budget only) and reports those
curves instead: the evidence for a default budget.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.errors import PhbenchError  # noqa: E402
from benchmark.models import ModelStore  # noqa: E402
from benchmark.profiles import get_profile  # noqa: E402
from benchmark.registry import get_table  # noqa: E402
from benchmark.runner import part_overrides_for, plan_run, planned_runs  # noqa: E402

FLAT = 0.02  # |relative change| below this over the last quarter: flat
WITHIN = 0.20  # the budget rule: the first epoch within 20 % of the curve's lowest loss
POINTS = 10  # epochs shown per curve
META = ("stage", "epoch")  # history keys that are not losses


@dataclass
class Curve:
    """One model's loss per epoch (epochs counted across its stages); ``rows`` empty: no history stored."""

    method: str
    variant: str
    train_key: str
    loss: str = ""  # "val_loss" or "train:<key>"
    rows: tuple[tuple[str, int, float], ...] = ()  # (stage, epoch over all stages, value)

    @property
    def label(self) -> str:
        return self.method + (f"/{self.variant}" if self.variant else "")


def curve_from_history(method: str, variant: str, train_key: str, history: list[dict[str, Any]]) -> Curve:
    """The validation loss where any epoch has one, else the first training loss of the first epoch."""
    if not history:
        return Curve(method, variant, train_key)
    if any(_number(row.get("val_loss")) is not None for row in history):
        key, name = "val_loss", "val_loss"
    else:
        losses = [k for k in history[0] if k not in META and _number(history[0][k]) is not None]
        if not losses:
            return Curve(method, variant, train_key)
        key = "loss" if "loss" in losses else losses[0]
        name = f"train:{key}"
    rows = tuple((str(row.get("stage", "")), i, v) for i, row in enumerate(history)
                 if (v := _number(row.get(key))) is not None)
    return Curve(method, variant, train_key, name, rows)


def _number(value: Any) -> float | None:
    """A history value as a float (json reads NaN / Infinity back as floats; ``default=str`` may have written
    them as text); None for anything else."""
    try:
        return float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        return None


def relative_change(values: list[float]) -> float | None:
    """(mean of the last quarter − mean of the quarter before) / |mean of the quarter before|; None when the
    curve has fewer than two epochs or the earlier quarter averages to zero / non-finite."""
    q = len(values) // 4 or (1 if len(values) >= 2 else 0)
    if q == 0:
        return None
    last, before = values[-q:], values[-2 * q:-q]
    m_last, m_before = sum(last) / len(last), sum(before) / len(before)
    if not (math.isfinite(m_last) and math.isfinite(m_before)) or m_before == 0:
        return None
    return (m_last - m_before) / abs(m_before)


def flattens_at(values: list[float], within: float = WITHIN) -> int | None:
    """The first epoch (1-based) whose loss is at most the curve's lowest + ``within`` × |lowest|: where the default
    budgets stop (table1's AE 10, RA 5, AFSC 5, IterMask2 2, PHANES 1 epochs). None without a finite value."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    bound = min(finite) + within * abs(min(finite))
    return next(i + 1 for i, v in enumerate(values) if math.isfinite(v) and v <= bound)


def verdict(change: float | None) -> str:
    if change is None:
        return "too short to tell"
    if abs(change) < FLAT:
        return "flat"
    return "still falling" if change < 0 else "rising"


def sampled(rows: tuple[tuple[str, int, float], ...], points: int = POINTS) -> list[tuple[str, int, float]]:
    """~``points`` rows evenly spaced over the curve, first and last included."""
    if len(rows) <= points:
        return list(rows)
    picks = sorted({round(i * (len(rows) - 1) / (points - 1)) for i in range(points)})
    return [rows[i] for i in picks]


def table_curves(table: str, store: str | Path, profile: str = "default",
                 methods: list[str] | None = None) -> list[Curve]:
    """Every model (once per train key, folds included) of the table's runs with its stored history; models not
    trained yet are left out."""
    spec_table, prof = get_table(table), get_profile(profile)
    models = ModelStore(Path(store) / profile)
    out: dict[str, Curve] = {}
    for part, method, variant, seed, data, _ in planned_runs(spec_table, profile, None, methods):
        plan = plan_run(spec_table, method, variant, seed, prof, data, part.overrides, part.metrics or None)
        for model in [p.model for p in plan.folds] or [plan.model]:
            if model.train_key in out or not models.is_trained(model):
                continue
            history = models.read_training(model).get("fit", {}).get("history") or []
            out[model.train_key] = curve_from_history(method, variant, model.train_key, history)
    return list(out.values())


def train_longer(table: str, method: str, epochs: int, store: str | Path, profile: str = "default",
                 device: str | None = None) -> Curve:
    """The curve of the table's (first part's, seed-0 or first-seed) model of ``method`` trained for ``epochs``
    epochs into ``store`` (reused when there already), everything else as the table runs it."""
    from benchmark.device import pick_device
    from benchmark.models import obtain

    spec_table, prof = get_table(table), get_profile(profile)
    for part, name, variant, seed, data, _ in planned_runs(spec_table, profile, None, [method]):
        if variant:
            continue
        overrides = {**(part.overrides or {}), method: {**part_overrides_for(part.overrides, method, prof),
                                                        "epochs": epochs}}
        plan = plan_run(spec_table, name, "", seed, prof, data, overrides, part.metrics or None)
        models = ModelStore(Path(store) / profile)
        obtain(plan.model, plan.train, plan.val, models, pick_device(device), progress=False)
        history = models.read_training(plan.model).get("fit", {}).get("history") or []
        return curve_from_history(method, f"{epochs} epochs", plan.model.train_key, history)
    raise PhbenchError(f"{table} has no run of {method!r} without a variant")


def report(curves: list[Curve], within: float = WITHIN) -> list[str]:
    """The printed lines: one block per model."""
    lines = []
    for c in curves:
        if not c.rows:
            lines.append(f"{c.label} [{c.train_key[:10]}]: no training history in train.json (trained before it "
                         "was kept, or nothing trained by epochs)")
            continue
        # a last stage of >= 4 epochs is judged alone (ProxyAno's IRM learns another thing than its PEM); a short
        # one (AFSC's one fine-tuning epoch with binary masks) with the stages before it
        last_stage = c.rows[-1][0]
        values = [v for s, _, v in c.rows if s == last_stage]
        judged = last_stage if len(values) >= 4 else "all stages"
        values = values if len(values) >= 4 else [v for _, _, v in c.rows]
        change = relative_change(values)
        shown = ", ".join(f"{e + 1}:{v:.4g}" for _, e, v in sampled(c.rows))
        pct = "n/a" if change is None else f"{100 * change:+.1f} %"
        stages = list(dict.fromkeys(s for s, _, _ in c.rows))
        where = f" (stages {', '.join(stages)}; judged on {judged})" if len(stages) > 1 else ""
        lines.append(f"{c.label} [{c.train_key[:10]}] {c.loss} over {len(c.rows)} epochs{where}: {shown}")
        flat = flattens_at([v for _, _, v in c.rows], within)
        lines.append(f"    last quarter vs the one before: {pct} -> {verdict(change)}; first epoch within "
                     f"{100 * within:.0f} % of the lowest: {flat}")
    return lines


def write_csv(curves: list[Curve], path: Path) -> None:
    from benchmark.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "variant", "train_key", "stage", "epoch", "loss", "value"])
        for c in curves:
            w.writerows([c.method, c.variant, c.train_key, s, e, c.loss, v] for s, e, v in c.rows)


def plot(curves: list[Curve], path: Path) -> str:
    """One panel per model; a message instead when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"{path}: not written (matplotlib is not installed; pip install matplotlib)"
    from benchmark.io import atomic_path

    drawn = [c for c in curves if c.rows]
    if not drawn:
        return f"{path}: not written (no model has a training history)"
    fig, axes = plt.subplots(len(drawn), 1, figsize=(6, 2.2 * len(drawn)), squeeze=False)
    for ax, c in zip(axes[:, 0], drawn):
        ax.plot([e + 1 for _, e, _ in c.rows], [v for _, _, v in c.rows], marker=".")
        ax.set_title(f"{c.label}: {c.loss}", fontsize=9)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return f"{path}: written"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="runs", help="run store (as `phbench table --store`)")
    ap.add_argument("--table", default="table1")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--longer", nargs="+", default=None, metavar="METHOD:EPOCHS",
                    help="train the table's model of METHOD for EPOCHS epochs into --store first and report those")
    ap.add_argument("--device", default=None, help="for --longer (default: CUDA when present)")
    ap.add_argument("--within", type=float, default=WITHIN,
                    help="the budget rule's tolerance: first epoch within this fraction of the lowest loss")
    ap.add_argument("--csv", type=Path, default=None, help="write every curve point here")
    ap.add_argument("--plot", type=Path, default=None, help="PNG of the curves (needs matplotlib)")
    args = ap.parse_args(argv)
    try:
        if args.longer:
            pairs = [item.rpartition(":") for item in args.longer]
            if any(not m or not n.isdigit() or int(n) < 1 for m, _, n in pairs):
                raise PhbenchError(f"--longer takes METHOD:EPOCHS with EPOCHS >= 1, got {' '.join(args.longer)}")
            curves = [train_longer(args.table, m, int(n), args.store, args.profile, args.device) for m, _, n in pairs]
        else:
            curves = table_curves(args.table, args.store, args.profile, args.methods)
    except PhbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not curves:
        print(f"no trained model of {args.table} [{args.profile}] in {args.store}")
        return 1
    print("\n".join(report(curves, args.within)))
    if args.csv is not None:
        write_csv(curves, args.csv)
        print(f"{args.csv}: written")
    if args.plot is not None:
        print(plot(curves, args.plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
