"""Compute estimates of tables (``phbench estimate``): what a table's plan trains and scores, times the seconds per
slice that ``scripts/bench_throughput.py`` measured (a JSON under ``results/throughput/``).

Why: a paper table needs the paper's networks and budgets, which only a GPU cluster runs; before asking for one, the
hours per table should be known, from the suite's own plan and from measured speeds, not guessed.

What is counted, for every (part, method, variant, seed) of the table as :func:`benchmark.runner.plan_run` resolves
it (profile, table overrides, variant):

- each model once per train key (upstreams included, e.g. AutoDDPM's DDPM), across every table of one call, as a run
  store trains it once: the slices the shared trainer's loop sees under the config's budget, stage by stage (the
  trainer's rule: a stage's own epochs / max_steps, else the config's; ⌊n_train / batch⌋ steps per epoch). Early
  stopping can only end a training sooner: the figure is its budget. Validation losses during training are not
  counted;
- each scoring configuration once per slice set (score key × slice key): the test split, the validation split (the
  protocols' healthy-validation thresholds) and the training split where a metric's threshold comes from the training
  normals (ids naming ``train_normal``, as ``protocols.suites.run_standard`` decides), plus the calibration on the
  validation split at its measured seconds per slice. Sets a protocol derives (RA's synthetic anomalies on the normal
  test slices) are not counted separately.

Seconds = slices × the measured seconds per slice of the method (its variant's figure when one was measured, else
the default variant's, said in the notes) × (table px / measured px)² when the table's slices are another size ×
passes(run config) / passes(measured config) for the scorers whose chain or search length is a config field
(each method's ``score_passes``). Every figure is an extrapolation from a few timed steps on one device, and the
output says so.

A table on a release that is not here (no ``--root``) is planned on :data:`PUBLISHED` split sizes: the committed split
lists' subject counts (or the paper's counts) × the recipe's slices per subject; the output names them.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from benchmark.errors import PhbenchError
from benchmark.profiles import get_profile

REPO = Path(__file__).resolve().parent.parent
THROUGHPUT_DIR = REPO / "results" / "throughput"
PUBLISHED_ROOT = Path("<published split sizes>")  # the root handed to a table's stores while PUBLISHED stands in


# --------------------------------------------------------------------------------------------- scoring passes


def score_passes(method: str, config: Any) -> float | None:
    """Network passes per scored slice that ``config`` sets (None: one pass, or data-dependent like IterMask2's):
    the method's own :meth:`benchmark.contract.Method.score_passes`."""
    from benchmark.registry import get_method

    return get_method(method).score_passes(config)


# ------------------------------------------------------------------------------------------ published sizes


@dataclass(frozen=True)
class Published:
    """Slices per split (train, val, test) of a setup whose release is not here: subjects × slices per subject.
    ``subjects`` None: counted in the setup's committed split lists. ``upper_bound``: the recipe keeps only some
    slices per subject (lesion-free ones), so the count is a bound. ``like``: the setup whose recipe sizes the slices
    (a merged setup has none of its own)."""

    per_subject: tuple[float, float, float]
    source: str
    subjects: tuple[int, int, int] | None = None
    upper_bound: bool = False
    like: str = ""

    def counts(self, setup_id: str) -> tuple[int, int, int]:
        subjects = self.subjects or _listed_subjects(setup_id)
        return tuple(int(round(n * k)) for n, k in zip(subjects, self.per_subject))  # type: ignore[return-value]


def _listed_subjects(setup_id: str) -> tuple[int, int, int]:
    """Subjects per split of a setup's committed lists (a ``datasets.splits.from_lists`` split)."""
    from datasets.recipes_paper import SETUPS

    listed = getattr(SETUPS[setup_id].split(), "listed", None)
    if listed is None:
        raise PhbenchError(f"{setup_id}: its split is computed from the release, not listed: give its subject counts")
    n = Counter(listed.values())
    return n["train"], n["val"], n["test"]


_BAND = "≤ 20 lesion-free slices per train / val subject (the recipe's 20-slice band), one test slice"
PUBLISHED: dict[str, Published] = {
    **{f"itermask2-brats2021-{m}": Published(
        (20, 20, 1), f"IterMask2's BraTS2021 lists (990 / 128 / 133 subjects) × {_BAND} (z 70–89)", upper_bound=True)
       for m in ("flair", "t1", "t1ce", "t2")},
    "itermask2-atlas2": Published((20, 20, 1), f"the suite's ATLAS v2.0 split (518 / 67 / 70) × {_BAND}",
                                  upper_bound=True),
    **{f"itermask2-isles2015-fold{k}": Published((20, 20, 1), f"the suite's ISLES 2015 4-fold lists × {_BAND}",
                                                 upper_bound=True) for k in range(4)},
    "ra-fastmri": Published((1, 1, 1), "RA's fastMRI+ lists, one middle slice each"),
    "ra-fastmri-711": Published((1, 1, 1), "RA's fastMRI+ lists (the config's 130 training normals), one slice each"),
    "ra-ixi": Published((1, 1, 1), "RA's 581 IXI training subjects, one middle slice each"),
    "ra-ixi-fastmri": Published((1, 1, 1), "RA's lists: 581 IXI + 131 fastMRI+ training normals, 15 val, 165 test "
                                           "images, one middle slice each", subjects=(712, 15, 165)),
    "phanes-atlas2": Published((1, 1, 1), "PHANES's 655 ATLAS test cases, slice 95"),
    "phanes-ixi-fastmri-atlas2": Published((1, 1, 1), "RA's 712 / 15 training / val normals, PHANES's 655 ATLAS "
                                                      "test slices", subjects=(712, 15, 655), like="ra-ixi-fastmri"),
    "ra-ixi-dev": Published((11, 11, 11), "the committed IXI development split (24 / 4 / 8) × 11 slices"),
    "afsc-hcp": Published((182, 182, 0), "AFSC: 526 HCP subjects (5 % held out: 500 / 26) × every axial slice at 1 mm "
                                         "(≈ 182, protocols/afsc.md §3)", subjects=(500, 26, 0)),
    "afsc-brats2017": Published((0, 0, 155), "AFSC: 285 BraTS2017 subjects × 155 axial slices", subjects=(0, 0, 285)),
    "afsc-msseg2015": Published((0, 0, 181), "AFSC: 21 MS-SEG2015 scans × 181 axial slices", subjects=(0, 0, 21)),
    "proxyano-brain": Published((1, 1, 1), "the suite's bt_default split of the full Kaggle brain sets (215 training "
                                           "normals after pHash de-duplication; test 106 normals + 106 tumours)",
                                subjects=(215, 0, 212)),
    "proxyano-oct2017": Published((1, 1, 1), "OCT2017: 26,315 NORMAL training scans, the 1,000 official test scans",
                                  subjects=(26_315, 0, 1_000)),
    "proxyano-idrid": Published((9, 9, 9), "IDRiD: 134 grade-0 training images, 81 part-A test images, 3×3 tiles each",
                                subjects=(134, 0, 81)),
}


class NominalSlices:
    """A split of a :class:`NominalStore`: its size and a key, nothing to read (what a plan needs of a slice set)."""

    def __init__(self, store: "NominalStore", split: str, n: int):
        self.store, self.split_name, self.n = store, split, n

    def __len__(self) -> int:
        return self.n

    @property
    def cache_key(self) -> str:
        return f"{self.store.fingerprint}:{self.split_name}:{self.n}"

    def take(self, n: int) -> "NominalSlices":
        return NominalSlices(self.store, self.split_name, min(n, self.n))


class NominalStore:
    """Stands in for a setup's prepared store when its release is not here: the published slice counts per split,
    the recipe's size and channels (a zero-stride array gives ``images`` its shape), a fingerprint of the setup id."""

    def __init__(self, setup_id: str, counts: tuple[int, int, int], channels: int, size: int, aux: int,
                 source: str):
        self.setup_id, self.counts, self.source = setup_id, dict(zip(("train", "val", "test"), counts)), source
        self.images = np.broadcast_to(np.float32(0), (1, channels, size, size))
        self.aux = np.broadcast_to(np.float32(0), (1, aux, size, size)) if aux else None
        self.fingerprint = f"published:{setup_id}:{'/'.join(map(str, counts))}"
        self.path = PUBLISHED_ROOT / setup_id
        self.meta: dict[str, Any] = {"skipped": []}

    def split(self, name: str, *, label: int | None = None, pathology: str | None = None) -> NominalSlices:
        return NominalSlices(self, name, self.counts.get(name, 0))


@dataclass(frozen=True)
class _NominalSetup:
    """In ``datasets.recipes_paper.SETUPS`` while :func:`published_setups` runs: prepares a :class:`NominalStore`
    (``recipe``: the name of the recipe that sizes its slices; empty without published sizes)."""

    setup_id: str
    recipe: str = ""
    counts: tuple[int, int, int] = (0, 0, 0)

    def prepare(self, root: Any, **_: Any) -> NominalStore:
        from datasets.recipes_paper import get_recipe

        pub = PUBLISHED.get(self.setup_id)
        if pub is None or not self.recipe:
            raise PhbenchError(f"{self.setup_id}: no published split sizes to estimate from; give --root")
        recipe = get_recipe(self.recipe)
        return NominalStore(self.setup_id, self.counts, len(recipe.channels), recipe.size, len(recipe.aux_channels),
                            pub.source + (" (an upper bound)" if pub.upper_bound else ""))


@contextlib.contextmanager
def published_setups() -> Iterator[None]:
    """Every paper setup prepares a :class:`NominalStore` inside the block (the tables' own store functions run, so
    folds, cross-dataset pairs and shared stores are what they are for real data); restored on exit."""
    from unittest import mock

    from datasets.recipes_paper import SETUPS

    def nominal(sid: str) -> _NominalSetup:  # read from the real setups before they are replaced
        pub = PUBLISHED.get(sid)
        return _NominalSetup(sid) if pub is None else _NominalSetup(
            sid, getattr(SETUPS[pub.like or sid], "recipe", ""), pub.counts(sid))

    with mock.patch.dict(SETUPS, {sid: nominal(sid) for sid in SETUPS}):
        yield


# ---------------------------------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figure:
    """One measured method: seconds per training / scored / calibrated slice at ``size`` px, the passes per slice
    of the measured config (None: not config-set), and how it was measured."""

    label: str
    size: int
    train_s: float | None
    score_s: float
    calibrate_s: float | None
    passes: float | None
    steps: int
    device: str
    mean_passes: float | None = None  # a data-dependent scorer's mean passes per slice when measured (IterMask2)
    load: float | None = None  # the machine's 1-min load average when it was measured
    profile: str | None = None  # the profile whose configs (networks, widths) were measured


@dataclass
class Throughput:
    """The rows of a throughput JSON (``scripts/bench_throughput.py --json``) for one device and dtype."""

    path: Path
    header: dict[str, Any]
    rows: list[dict[str, Any]]
    device: str = ""  # the device words every figure was measured on

    @classmethod
    def load(cls, path: str | Path, device_name: str | None = None) -> "Throughput":
        """The figures of ``path`` for ``device_name`` (a word of the device, e.g. ``cuda``, ``H100``, ``cpu``;
        default: CUDA rows when there are any, else CPU), bf16 rows where measured on CUDA, else fp32."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise PhbenchError(f"{path}: no throughput figures; write them with scripts/bench_throughput.py --json "
                               f"{path}") from err
        except ValueError as err:
            raise PhbenchError(f"{path}: not a throughput JSON ({err}); rewrite it with scripts/bench_throughput.py")\
                from err
        rows = doc.get("rows") if isinstance(doc, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "method" in r for r in rows):
            raise PhbenchError(f"{path}: no 'rows' list of measured methods; rewrite it with "
                               "scripts/bench_throughput.py")
        # rows of the suite as it runs: measured, and not tagged with a tuning it does not apply (channels_last)
        good = [r for r in rows if "error" not in r and r.get("score_sps") and not r.get("tuning")]
        if device_name is None:
            device_name = "cuda" if any(r.get("device", "").startswith("cuda") for r in good) else "cpu"
        word = device_name.lower()
        mine = [r for r in good if word in f"{r.get('device', '')} {r.get('device_name', '')}".lower()]
        if not mine:
            seen = sorted({f"{r.get('device')} ({r.get('device_name', '?')})" for r in good}) or ["none"]
            raise PhbenchError(f"{path}: no figures measured on {device_name!r}; it holds: {', '.join(seen)}")
        if any(r.get("dtype") == "bf16" for r in mine):
            mine = [r for r in mine if r.get("dtype", "bf16") == "bf16"]
        names = sorted({f"{r.get('device')} ({r['device_name']})" if r.get("device_name") else r.get("device")
                        for r in mine})
        return cls(path, doc.get("header", {}), mine, " / ".join(names))

    def figure(self, method: str, variant: str, size: int, profile: str | None = None) -> tuple[Figure | None, str]:
        """The figure of ``method``/``variant`` (else of its default variant) nearest ``size`` px, from rows measured
        with ``profile``'s configs where there are any, and a note when it is not the row's own; None when the method
        was not measured."""
        label = method + (f"/{variant}" if variant else "")
        rows = [r for r in self.rows if r["method"] == label] or [r for r in self.rows if r["method"] == method]
        if not rows:
            return None, ""
        rows = [r for r in rows if r.get("profile") == profile] or rows
        row = min(rows, key=lambda r: (abs(int(r.get("size", size)) - size), -int(r.get("train_steps") or 0)))
        note = "" if row["method"] == label else f"{label}: the figure of {row['method']}"
        train = row.get("train_sps")
        calib = row.get("calibrate_s")
        n_cal = row.get("calibrate_slices")
        return Figure(row["method"], int(row.get("size", size)), 1.0 / train if train else None,
                      1.0 / float(row["score_sps"]), calib / n_cal if calib is not None and n_cal else None,
                      row.get("score_passes"), int(row.get("train_steps") or 0),
                      str(row.get("device_name") or row.get("device")), row.get("mean_passes"),
                      row.get("load_avg"), row.get("profile")), note


def default_throughput() -> Path:
    """``results/throughput/cuda.json`` when a GPU run was committed, else ``cpu.json``."""
    cuda = THROUGHPUT_DIR / "cuda.json"
    return cuda if cuda.is_file() else THROUGHPUT_DIR / "cpu.json"


# --------------------------------------------------------------------------------------------------- the plan


@dataclass
class Line:
    """One row of an estimate: a model kind (method/variant) of one table, its models and slices, and hours."""

    label: str
    models: int = 0
    shared: int = 0  # models another row or table of this call trains (counted there)
    train_slices: float = 0.0
    scored_slices: float = 0.0
    train_h: float | None = 0.0  # None: no figure
    bounded: bool = False  # a model's early stopping may end its training before the budget
    score_h: float | None = 0.0

    @property
    def total_h(self) -> float | None:
        return None if self.train_h is None or self.score_h is None else self.train_h + self.score_h


@dataclass
class TableEstimate:
    table_id: str
    data: list[tuple[str, str]] = field(default_factory=list)  # (store, its split sizes and where they come from)
    lines: dict[str, Line] = field(default_factory=dict)

    def line(self, label: str) -> Line:
        return self.lines.setdefault(label, Line(label))

    @property
    def total_h(self) -> float:
        return sum(x.total_h or 0.0 for x in self.lines.values())

    @property
    def bounded(self) -> bool:
        return any(x.bounded for x in self.lines.values())


@dataclass
class Estimate:
    profile: str
    throughput: Throughput
    tables: list[TableEstimate] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)  # label → why it has no hours
    notes: dict[str, list[str]] = field(default_factory=dict)  # what was assumed → the rows it was assumed for

    def note(self, text: str, label: str) -> None:
        labels = self.notes.setdefault(text, [])
        if label not in labels:
            labels.append(label)
    used: list[Figure] = field(default_factory=list)

    @property
    def total_h(self) -> float:
        return sum(t.total_h for t in self.tables)


@dataclass(frozen=True)
class Budget:
    """What the shared trainer's budget rule makes of a built method: ``kind`` "steps" (per stage: epochs and
    max_steps as :meth:`benchmark.trainer.Stage.budget` resolves them for ``Trainer.fit``), "bank" (learns from each
    training slice once) or "none" (training-free); ``early_stop``: a patience may end it sooner."""

    kind: str
    batch: int = 0
    stages: tuple[tuple[int | None, int | None], ...] = ()
    early_stop: bool = False

    @classmethod
    def of(cls, method: Any) -> "Budget":
        from benchmark.contract import Method, Trainable

        if not isinstance(method, Trainable):
            return cls("bank" if type(method).learn is not Method.learn else "none")
        cfg = method.config
        stages = [st.budget(cfg) for st in method.stages()]
        patience = [st.early_stop_patience for st in method.stages()] + [cfg.early_stop_patience]
        return cls("steps", int(cfg.batch_size), tuple(stages), any(p is not None for p in patience))

    def slices(self, n_train: int) -> int:
        """Training slices the loop sees: per stage, epochs × ⌊n / batch⌋ steps (one short batch when n < batch),
        cut at max_steps."""
        if self.kind != "steps":
            return n_train if self.kind == "bank" else 0
        per_epoch = max(1, n_train // self.batch)
        total = 0
        for epochs, max_steps in self.stages:
            steps = min(math.inf if epochs is None else epochs * per_epoch,
                        math.inf if max_steps is None else max_steps)
            total += int(steps) * min(self.batch, n_train)
        return total


class _Budgets:
    """The budget of each distinct (method, variant, config, data): the stages need an instance, built once on the
    CPU (upstreams first) and dropped."""

    def __init__(self) -> None:
        self.known: dict[str, Budget] = {}

    def __call__(self, spec: Any) -> Budget:
        from benchmark.models import build

        def instance(s: Any) -> Any:
            return build(s, "cpu", {name: instance(up) for name, up in s.upstream})

        key = json.dumps([_label(spec), spec.config.to_dict(), [spec.data.image_size, spec.data.channels]],
                         sort_keys=True, default=str)
        if key not in self.known:
            self.known[key] = Budget.of(instance(spec))
        return self.known[key]


def _tree(spec: Any) -> Iterator[Any]:
    """A model spec's upstreams (depth first), then itself."""
    for _, up in spec.upstream:
        yield from _tree(up)
    yield spec


def _label(spec: Any) -> str:
    return spec.method + (f"/{spec.variant}" if spec.variant else "")


def _data_sources(data: Any) -> list[tuple[str, str]]:
    """(store, split sizes and where they come from) of a part's data: each nominal store's published sizes, or the
    prepared store's counts (folds and cross-dataset pairs: each store)."""
    parts = getattr(data, "stores", None) or [s for s in (getattr(data, "train_store", None),
                                                          getattr(data, "test_store", None)) if s is not None]
    if parts:
        return [x for s in parts for x in _data_sources(s)]
    if isinstance(data, NominalStore):
        c = data.counts
        return [(data.setup_id, f"{c['train']:,} / {c['val']:,} / {c['test']:,} train / val / test slices: "
                                f"{data.source}")]
    n = [len(data.split(s, label=0 if s != "test" else None)) for s in ("train", "val", "test")]
    return [(f"prepared store {data.path}", f"{n[0]:,} / {n[1]:,} / {n[2]:,} train / val / test slices")]


def _planned(spec: Any, profile: str, root: str | Path | None, methods: list[str] | None,
             seeds: list[int] | None) -> list[tuple]:
    """The table's runs as the runner plans them; on published split sizes when its release is not here."""
    from benchmark.runner import planned_runs

    try:
        return list(planned_runs(spec, profile, root, methods, seeds))
    except PhbenchError:
        if root is not None:
            raise
    with published_setups():
        return list(planned_runs(spec, profile, PUBLISHED_ROOT, methods, seeds))


def estimate(tables: list[str], throughput: Throughput, *, profile: str = "paper", root: str | Path | None = None,
             methods: list[str] | None = None, seeds: list[int] | None = None) -> Estimate:
    """The hours each table's runs take at ``throughput``'s speeds (module docstring: what is counted)."""
    from benchmark.registry import get_table
    from benchmark.runner import plan_run
    from benchmark.scoring import slice_key

    prof = get_profile(profile)
    out = Estimate(profile, throughput)
    budgets = _Budgets()
    trained: set[str] = set()
    scored: set[tuple[str, str]] = set()
    for table_id in tables:
        spec = get_table(table_id)
        mine = TableEstimate(table_id)
        out.tables.append(mine)
        for part, method, variant, seed, data, _ in _planned(spec, profile, root, methods, seeds):
            for src in _data_sources(data):
                if src not in mine.data:
                    mine.data.append(src)
            plan = plan_run(spec, method, variant, seed, prof, data, part.overrides, part.metrics or None)
            needs_train = any("train_normal" in m for m in plan.spec.metrics)
            for fold in plan.folds or [plan]:
                for model in _tree(fold.model):
                    line = mine.line(_label(model))
                    if model.train_key in trained:
                        line.shared += 1
                        continue
                    trained.add(model.train_key)
                    line.models += 1
                    budget = budgets(model)
                    n = budget.slices(len(fold.train))
                    line.train_slices += n
                    line.bounded |= budget.early_stop
                    _add(out, line, model, n, 0, 0)
                line = mine.line(_label(fold.model))
                for slices in [fold.test, fold.val] + ([fold.train] if needs_train else []):
                    key = (fold.model.score_key, str(slice_key(slices)))
                    if key in scored or not len(slices):
                        continue
                    scored.add(key)
                    line.scored_slices += len(slices)
                    calibrated = len(slices) if slices is fold.val else 0  # calibrate() runs on the validation set
                    _add(out, line, fold.model, 0, len(slices), calibrated)
    return out


def _add(out: Estimate, line: Line, model: Any, train: int, score: int, calibrate: int) -> None:
    """Hours of ``train`` training / ``score`` scored / ``calibrate`` calibration slices of ``model`` on ``line``."""
    if line.train_h is None:
        return
    size = model.data.image_size
    configs = get_profile(out.profile).data_name  # whose networks the run trains (gpu: default's)
    fig, note = out.throughput.figure(model.method, model.variant, size, configs)
    if fig is None:
        out.missing[_label(model)] = (f"no figure for {model.method} in {out.throughput.path} (measure it: "
                                      f"scripts/bench_throughput.py --methods {model.method} --update --json "
                                      f"{out.throughput.path})")
        line.train_h = line.score_h = None
        return
    if fig not in out.used:
        out.used.append(fig)
    if note:
        out.note("the default variant's figure (the variant was not measured)", _label(model))
    scale = (size / fig.size) ** 2
    if fig.profile and fig.profile != configs:
        out.note(f"measured with the {fig.profile} profile's networks, not the {configs} profile's, which this run "
                 f"trains: the hours are for those networks (measure these: scripts/bench_throughput.py --profile "
                 f"{configs} --update --json {out.throughput.path})", fig.label)
    if fig.size != size:
        out.note(f"measured at {fig.size} px, scaled by the pixel count to {size} px", fig.label)
    if train and fig.train_s is None:
        out.note("no training figure (training-free when measured): its training counts 0 h", fig.label)
    if fig.mean_passes:
        out.note(f"{fig.mean_passes:.1f} network passes per scored slice when measured after {fig.steps} training "
                 "steps (the count depends on the data and the trained state: indicative)", fig.label)
    passes = score_passes(model.method, model.config)
    ratio = passes / fig.passes if passes and fig.passes else 1.0
    if passes and fig.passes and passes != fig.passes:
        out.note(f"{passes:g} network passes per scored slice, measured at {fig.passes:g}: scaled ×{ratio:.3g}",
                 fig.label)
    line.train_h = (line.train_h or 0.0) + train * (fig.train_s or 0.0) * scale / 3600
    seconds = score * fig.score_s + calibrate * (fig.calibrate_s or 0.0)
    line.score_h = (line.score_h or 0.0) + seconds * ratio * scale / 3600


# ------------------------------------------------------------------------------------------------- the report


def _hours(h: float | None, bounded: bool = False) -> str:
    if h is None:
        return "no figure"
    return ("≤ " if bounded else "") + (f"{h:,.0f}" if h >= 100 else f"{h:.1f}" if h >= 1 else f"{h:.2g}")


def report(est: Estimate) -> str:
    """The estimate as Markdown: one table per table id, its data, the totals and where the figures come from."""
    from tabulate import tabulate

    tp = est.throughput
    out = [f"Estimated hours on {tp.device} (profile {est.profile}; figures {tp.path.name}):", ""]
    for t in est.tables:
        rows = [(x.label, f"{x.models}" + (f" (+{x.shared} shared)" if x.shared else ""),
                 ("≤ " if x.bounded else "") + f"{x.train_slices:,.0f}", _hours(x.train_h, x.bounded),
                 f"{x.scored_slices:,.0f}", _hours(x.score_h), _hours(x.total_h, x.bounded))
                for x in t.lines.values()]
        unmeasured = sum(x.total_h is None for x in t.lines.values())
        rows.append(("**total**", "", "", "", "", "", f"**{_hours(t.total_h, t.bounded)}**"
                     + (f" + {unmeasured} rows without a figure" if unmeasured else "")))
        out += [f"### {t.table_id}", "",
                tabulate(rows, headers=["model", "models (shared)", "train slices", "train h", "scored slices",
                                        "score h", "total h"], tablefmt="github", disable_numparse=True), ""]
        grouped: dict[str, list[str]] = {}
        for name, detail in t.data:
            grouped.setdefault(detail, []).append(name)
        out += [f"- data: {', '.join(names)}: {detail}" for detail, names in grouped.items()] + [""]
    if len(est.tables) > 1:
        out += [f"All tables: {_hours(est.total_h, any(t.bounded for t in est.tables))} h (each model and each "
                "scored set counted once).", ""]
    steps = sorted({f.steps for f in est.used if f.steps}) or [0]
    span = f"{steps[0]}" if steps[0] == steps[-1] else f"{steps[0]}–{steps[-1]}"
    loads = sorted(f.load for f in est.used if f.load is not None)
    load = f", 1-min load {loads[0]:.1f}–{loads[-1]:.1f} while measuring" if loads else ""
    out.append(f"An extrapolation, not a measurement: {span} timed training steps and a few scored batches per method "
               f"on {tp.device} ({tp.header.get('threads', '?')} torch thread(s){load}), scaled to each config's "
               "budget; ≤: a model with early stopping, which can end its training sooner.")
    out += [f"- {text}: {', '.join(labels)}" for text, labels in est.notes.items()]
    out += [f"- {label}: {why}" for label, why in est.missing.items()]
    return "\n".join(out)


def run(tables: list[str], *, profile: str = "paper", throughput: str | Path | None = None,
        device_name: str | None = None, root: str | Path | None = None, methods: list[str] | None = None,
        seeds: list[int] | None = None) -> str:
    """``phbench estimate``: the report of :func:`estimate` for ``tables``."""
    tp = Throughput.load(throughput or default_throughput(), device_name)
    return report(estimate(tables, tp, profile=profile, root=root, methods=methods, seeds=seeds))

