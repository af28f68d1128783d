"""Run a table: for each (method, variant, seed) train (or reuse the trained model) → evaluate with the
table's protocol → metric rows in the run store.

A finished run (its rows.csv exists and passes its check) is skipped; a model trained for another table on the
same data is reused; an interrupted training resumes from its checkpoint. Processes and jobs may share a store:
each run is evaluated under its own lock and each model trained under its own. A run that fails (a damaged
stored file included: one line naming it) is reported on one line and the others continue, so one broken
method never loses the rest.
"""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd
import torch

from benchmark.device import pick_device
from benchmark.folds import Folds, FoldScorer, PooledSlices, key_digest
from benchmark.models import ModelSpec, ModelStore, model_spec, obtain
from benchmark.models import scorer as model_scorer
from benchmark.profiles import Profile, configure, get_profile
from benchmark.provenance import provenance
from benchmark.registry import get_method, get_table
from benchmark.runstore import RunSpec, RunStore

if TYPE_CHECKING:
    from datasets.splits import SubjectsFile

log = logging.getLogger(__name__)


@dataclass
class TableRun:
    table_id: str
    rows: pd.DataFrame
    failures: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)  # evaluated now
    skipped: list[str] = field(default_factory=list)  # finished before
    trained: list[str] = field(default_factory=list)  # models trained now (the others were reused)
    outputs: dict[str, Path] = field(default_factory=dict)
    skipped_subjects: dict[str, None] = field(default_factory=dict)  # one line per bad subject left out (ordered)


@dataclass
class PlannedRun:
    """What one (method, variant, seed) of a table trains and scores on, and its run-store identity."""

    spec: RunSpec
    model: ModelSpec
    train: object  # SliceSet: healthy training slices
    val: object  # SliceSet: healthy validation slices
    test: object  # SliceSet
    # a cross-validated column (the part's store is a benchmark.folds.Folds): one plan per fold; train / val / test
    # above are then the folds' pooled slices and ``model`` the first fold's
    folds: list["PlannedRun"] = field(default_factory=list)

    @property
    def config(self):
        return self.model.config

    @property
    def method_cls(self) -> type:
        return self.model.method_cls


def _group(part: str, own: str) -> str:
    """A table part's column group (e.g. the modality) joined with the protocol's own (e.g. the anomaly kind)."""
    return " / ".join(x for x in (part, own) if x)


def selected_parts(spec_table, parts: list[str] | None = None) -> list:
    """The table parts (column groups) a run asks for: all, or those whose column group equals or contains (case
    aside) one of ``parts`` -- e.g. ``brain`` picks ProxyAno Table I's "Brain MRI [28]" columns. A name that picks
    no part is an error that lists the table's parts."""
    every = list(spec_table.all_parts)
    if not parts:
        return every
    from benchmark.errors import PhbenchError

    chosen = []
    for name in parts:
        hits = [p for p in every if name == p.column_group or name.lower() in p.column_group.lower()]
        if not hits:
            names = ", ".join(repr(p.column_group) for p in every if p.column_group) or "(one unnamed part)"
            raise PhbenchError(f"{spec_table.table_id}: no part matches {name!r}; its parts: {names}")
        chosen += [p for p in hits if p not in chosen]
    return [p for p in every if p in chosen]


def planned_runs(spec_table, profile: str, root: str | Path | None = None, methods: list[str] | None = None,
                 seeds: list[int] | None = None, skip_bad: bool = False, subset: bool | SubjectsFile = False,
                 parts: list[str] | None = None):
    """Every (part, method, variant, seed) of a table with its prepared data, in table order; each part's
    store is prepared (or opened) once; ``skip_bad`` leaves subjects with bad files out (listed in the store);
    ``parts`` runs only some column groups (:func:`selected_parts`)."""
    prof = get_profile(profile)
    for part in selected_parts(spec_table, parts):
        data = part.store(prof.data_name, None if root is None else Path(root), skip_bad=skip_bad, subset=subset)
        for method_name, variant in spec_table.methods:
            if (methods and method_name not in methods) or part.skips(method_name, variant):
                continue
            for seed in seeds if seeds is not None else prof.seeds:
                label = "".join([f"{part.column_group}: " if part.column_group else "", method_name,
                                 f"/{variant}" if variant else "", f" seed {seed}"])
                yield part, method_name, variant, seed, data, label


def part_overrides_for(overrides: Mapping[str, Any] | None, method_name: str, profile: Profile) -> Mapping[str, Any]:
    """The config fields a table part sets for ``method_name``: a mapping, or a function of the profile's data name
    (budgets that only the paper profile sets)."""
    o = (overrides or {}).get(method_name, {})
    return o(profile.data_name) if callable(o) else o


def plan_run(spec_table, method_name: str, variant: str, seed: int, profile: Profile, store_data,
             overrides: Mapping[str, Mapping[str, Any]] | None = None,
             metrics: tuple[str, ...] | None = None) -> PlannedRun:
    """The resolved config (profile, then variant), data splits and keys of one run -- the same for training
    it, scoring it and reading it back. On :class:`~benchmark.folds.Folds` one plan per fold, and the run's keys
    are digests of the folds' keys. ``overrides``: config fields per method name that the table part sets (e.g.
    IterMask2's τ percentile on ATLAS), applied after the profile's, to the method and to it as an upstream."""
    if isinstance(store_data, Folds):
        plans = [plan_run(spec_table, method_name, variant, seed, profile, s, overrides, metrics)
                 for s in store_data.stores]
        first = plans[0].spec
        run = RunSpec(method_name, variant, first.config, store_data.fingerprint, first.protocol, seed,
                      key_digest([p.spec.train_key for p in plans]), key_digest([p.spec.score_key for p in plans]),
                      table_id=first.table_id, metrics=first.metrics, options={**first.options, "folds": len(plans)})
        pooled = [PooledSlices([getattr(p, split) for p in plans]) for split in ("train", "val", "test")]
        return PlannedRun(run, plans[0].model, *pooled, folds=plans)
    train = store_data.split("train", label=0)
    val = store_data.split("val", label=0)
    test = store_data.split("test")
    if profile.max_train_slices:
        train = train.take(profile.max_train_slices)
    if profile.max_test_slices:
        test = test.take(profile.max_test_slices)
    model = model_spec(method_name, variant,
                       lambda cls: configure(cls, profile, **part_overrides_for(overrides, cls.name, profile)), train,
                       val, seed)
    run = RunSpec(method_name, variant, model.config.to_dict(), store_data.fingerprint, spec_table.protocol_id,
                  seed, model.train_key, model.score_key, table_id=spec_table.table_id,
                  metrics=tuple(metrics or spec_table.metrics), options=dict(spec_table.options))
    return PlannedRun(run, model, train, val, test)


def load_trained(plan: PlannedRun, run_store: RunStore, device: torch.device):
    """The finished run's method with its trained weights and calibration (for diagnostics and figures)."""
    return obtain(plan.model, plan.train, plan.val, ModelStore(run_store.root), device, progress=False,
                  train_missing=False).method


def run_one(spec_table, method_name: str, variant: str, seed: int, profile: Profile, store_data, run_store: RunStore,
            device: torch.device, progress: bool = True, column_group: str = "",
            memo: dict | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None,
            metrics: tuple[str, ...] | None = None, dataset: str = ""
            ) -> tuple[RunSpec, bool, list[str]]:
    """Train (or reuse) and evaluate one (method, variant, seed); returns (run spec, evaluated now, labels of
    the models trained now -- upstreams included). ``metrics`` / ``dataset``: a table part's own (default the
    table's). The evaluation holds the run's lock, so however many processes or jobs share the store, each run
    is evaluated once (and each model trained once: :func:`benchmark.models.obtain`)."""
    plan = plan_run(spec_table, method_name, variant, seed, profile, store_data, overrides, metrics)
    run = plan.spec
    if run_store.is_finished(run):
        return run, False, []
    with run_store.lock(run):
        if run_store.is_finished(run):  # another process evaluated it while we waited
            return run, False, []
        trained = _evaluate(plan, spec_table, profile, store_data, run_store, device, progress, column_group, memo,
                            dataset)
    return run, True, trained


def _evaluate(plan: PlannedRun, spec_table, profile: Profile, store_data, run_store: RunStore, device: torch.device,
              progress: bool, column_group: str, memo: dict | None, dataset: str) -> list[str]:
    """Train (or reuse) the run's models, run its protocol and write its rows; the labels of the models trained."""
    from protocols.suites import get_protocol

    run = plan.spec
    method_name, variant, seed = run.method, run.variant, run.seed
    models = ModelStore(run_store.root)
    gots = [obtain(p.model, p.train, p.val, models, device, progress=progress, _memo=memo)
            for p in (plan.folds or [plan])]
    scorers = [model_scorer(p.model, g.method, models, progress=progress) for p, g in zip(plan.folds or [plan], gots)]
    method, training, scorer = gots[0].method, gots[0].training, scorers[0]
    if plan.folds:  # one model per fold: the table's numbers pool their test slices
        scorer = FoldScorer(scorers)
        training = {"folds": [g.training for g in gots],
                    "train_wall_s": sum(g.training.get("train_wall_s") or 0.0 for g in gots),
                    "peak_mem_mb": max((g.training.get("peak_mem_mb") or 0.0 for g in gots), default=None)}
    # run-time inputs, not settings: outside the run key (computed by plan_run from spec_table.options)
    variant_hints = dict(plan.method_cls.variants[variant].protocol) if variant else {}
    options = {**spec_table.options, "cache_dir": Path(store_data.path) / "synthetic", "train": plan.train,
               "variant": variant_hints}  # e.g. itermask2/oracle: per-image best threshold
    evaluation = get_protocol(spec_table.protocol).run(scorer, plan.test, plan.val, run.metrics, options,
                                                       progress=progress)
    prov = provenance(device)
    common = {
        "table_id": spec_table.table_id, "method": method_name, "variant": variant,
        "dataset": dataset or spec_table.dataset,
        "seed": seed, "dataset_fingerprint": store_data.fingerprint, "protocol": run.protocol,
        "git_sha": prov["git_sha"], "phbench_version": prov["phbench_version"], "torch": prov["torch"],
        "device": prov["device"], "train_wall_s": training.get("train_wall_s"),
        "eval_wall_s": round(evaluation.eval_wall_s, 2), "peak_mem_mb": training.get("peak_mem_mb"),
        "config": json.dumps(plan.model.config.to_dict(), sort_keys=True, default=str),
    }
    regroup = spec_table.metric_groups

    def group_of(r: dict) -> str:
        return _group(column_group, regroup.get(r.get("metric_id", ""), r.get("column_group", "")))

    full = [{**common, **r, "column_group": group_of(r)} for r in evaluation.rows]
    for r in evaluation.subject_rows:
        r["column_group"] = group_of(r)
    info = {"provenance": prov, "training": training, "model": plan.model.describe(), "profile": profile.name,
            "n_test": evaluation.n_test, "protocol": evaluation.info,
            "calibration": [g.method.calibration for g in gots] if plan.folds else method.calibration,
            "network_passes": scorer.passes,
            "test_slices_per_s": evaluation.n_test / evaluation.eval_wall_s if evaluation.eval_wall_s else None}
    run_store.write_result(run, full, info, evaluation.subject_rows)
    return [t for g in gots for t in g.trained]


def run_table(table_id: str, *, profile: str = "default", store: str | Path = "runs", out: str | Path = "out/tables",
              methods: list[str] | None = None, device: str | None = None, seeds: list[int] | None = None,
              progress: bool = True, render: bool = True, root: str | Path | None = None,
              skip_bad: bool = False, subset: bool | SubjectsFile = False, parts: list[str] | None = None) -> TableRun:
    """Train (or reuse), evaluate and render every run of ``table_id``; ``root`` is the user's data folder
    for tables on a downloaded release (``TableSpec.needs_root`` says which); ``skip_bad`` runs on the
    subjects whose files are good and lists the others in ``TableRun.skipped_subjects``; ``subset`` runs on the
    listed subjects a root holds when it holds only part of the paper's subject lists, or is the user's own split
    (:class:`datasets.splits.SubjectsFile`, ``--subjects FILE``), which the rendered notes name."""
    spec_table = get_table(table_id)
    if not spec_table.runnable:
        raise NotImplementedError(f"{table_id}: not runnable yet ({spec_table.extra.get('status', 'no protocol')})")
    prof = get_profile(profile)
    dev = pick_device(device)
    run_store = RunStore(Path(store) / profile)
    result = TableRun(table_id, pd.DataFrame())
    chosen = [(m, v) for m, v in spec_table.methods if not methods or m in methods]
    keys: list[str] = []
    memo: dict = {}  # trained methods of this call by score key: an upstream shared by two methods loads once
    for part, method_name, variant, seed, data, label in planned_runs(spec_table, profile, root, methods, seeds,
                                                                     skip_bad, subset, parts):
        result.skipped_subjects.update(dict.fromkeys(data.meta.get("skipped", [])))
        try:
            run, ran, trained = run_one(spec_table, method_name, variant, seed, prof, data, run_store, dev,
                                        progress, part.column_group, memo, part.overrides, part.metrics or None,
                                        part.dataset)
        except Exception as err:  # one failing run must not lose the others
            log.debug("run failed", exc_info=True)
            result.failures.append(f"{label}: {type(err).__name__}: {err}")
            if log.isEnabledFor(logging.DEBUG):
                traceback.print_exc()
            continue
        keys.append(run.key)
        (result.ran if ran else result.skipped).append(label)
        own = method_name + (f"/{variant}" if variant else "")
        result.trained += [label if t == own else f"{label}: upstream {t}" for t in trained]
    frames = [run_store.read_rows(k) for k in keys]
    result.rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if render and not result.rows.empty:
        subjects = pd.concat([run_store.read_subjects(k) for k in keys], ignore_index=True)
        result.outputs = render_from_rows(spec_table, result.rows, subjects, chosen, Path(out) / profile, profile,
                                          parts, split_note(subset))
    return result


def split_note(subset: bool | SubjectsFile) -> str:
    """The rendered note of a table on the user's own split (``--subjects FILE``), so that it is never taken for the
    paper's; "" otherwise."""
    from datasets.splits import SubjectsFile

    if not isinstance(subset, SubjectsFile):
        return ""
    return (f"Subject split from {subset.describe()} (--subjects), not the paper's lists: these numbers are on "
            "that split, not the paper's setting.")


def render_from_rows(spec_table, rows: pd.DataFrame, subjects: pd.DataFrame, chosen, out_dir: Path,
                     profile: str, parts: list[str] | None = None, data_note: str = "") -> dict[str, Path]:
    """Markdown / LaTeX / CSV of a table's rows, with the paper's numbers beside ours where the paper
    printed this table, the paired tests and every footnote (metric ids, deviations). ``parts``: only those column
    groups were run, so only their paper columns are shown; ``data_note``: first note (the user's own split)."""
    from protocols.render import load_paper, render_table
    from protocols.tables import PAPER_TABLES_CSV

    notes = [data_note] if data_note else []
    notes += list(spec_table.footnotes)
    notes += [f"{part.column_group or 'All columns'}: no `{m}` ({why})." for part in spec_table.all_parts
              for m, why in part.skip_methods.items() if m.split("/")[0] in {m for m, _ in chosen}]
    paper = load_paper(PAPER_TABLES_CSV) if PAPER_TABLES_CSV.is_file() else None
    if paper is not None and parts:
        shown = [(p.dataset or spec_table.dataset, p.column_group) for p in selected_parts(spec_table, parts)]
        group = paper["column_group"].fillna("").astype(str)
        keep = pd.Series(False, index=paper.index)
        for dataset, column_group in shown:
            keep |= (paper["dataset"] == dataset) & group.str.startswith(column_group)
        paper = paper[keep | (paper["table_id"] != spec_table.table_id)]
    if paper is not None and spec_table.paper_rows:
        paper = paper.copy()
        variant = paper["variant"].fillna("").astype(str)
        for (m, v), (pm, pv) in spec_table.paper_rows.items():
            at = (paper["table_id"] == spec_table.table_id) & (paper["method"] == pm) & (variant == pv)
            paper.loc[at, ["method", "variant"]] = [m, v]
            notes.append(f"The paper's row `{pm}{'/' + pv if pv else ''}` is shown beside `{m}/{v}`.")
    return render_table(rows, table_id=spec_table.table_id, title=f"{spec_table.title} [profile {profile}]",
                        out_dir=out_dir, footnotes=notes, paper=paper, expected_methods=[m for m, _ in chosen],
                        subjects=subjects, reference_method=spec_table.reference_method,
                        paper_metric_ids=spec_table.paper_metric_ids, deviations=_deviations(chosen))


def collect_finished(table_id: str, *, profile: str = "default", store: str | Path = "runs",
                     methods: list[str] | None = None, seeds: list[int] | None = None,
                     root: str | Path | None = None, skip_bad: bool = False, subset: bool | SubjectsFile = False,
                     parts: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The rows and per-subject values of a table's finished runs (no training, no scoring), and the
    labels of the runs not finished yet -- for re-rendering and for ``phbench render``."""
    spec_table = get_table(table_id)
    prof = get_profile(profile)
    run_store = RunStore(Path(store) / profile)
    rows, subjects, missing = [], [], []
    for part, method_name, variant, seed, data, label in planned_runs(spec_table, profile, root, methods, seeds,
                                                                     skip_bad, subset, parts):
        run = plan_run(spec_table, method_name, variant, seed, prof, data, part.overrides, part.metrics or None).spec
        if run_store.is_finished(run):
            rows.append(run_store.read_rows(run))
            subjects.append(run_store.read_subjects(run))
        else:
            missing.append(label)
    cat = lambda fs: pd.concat(fs, ignore_index=True) if fs else pd.DataFrame()  # noqa: E731
    return cat(rows), cat(subjects), missing


def render_finished(table_id: str, *, profile: str = "default", store: str | Path = "runs",
                    out: str | Path = "out/tables", methods: list[str] | None = None, seeds: list[int] | None = None,
                    root: str | Path | None = None, skip_bad: bool = False, subset: bool | SubjectsFile = False,
                    parts: list[str] | None = None) -> tuple[dict[str, Path] | None, list[str]]:
    """A table rendered from its finished runs (no training, no scoring): its written files (None when no run is
    finished) and the labels of the runs not finished yet -- ``phbench render`` and the sweep's last phase."""
    spec_table = get_table(table_id)
    rows, subjects, missing = collect_finished(table_id, profile=profile, store=store, methods=methods, seeds=seeds,
                                               root=root, skip_bad=skip_bad, subset=subset, parts=parts)
    if rows.empty:
        return None, missing
    chosen = [(m, v) for m, v in spec_table.methods if not methods or m in methods]
    return render_from_rows(spec_table, rows, subjects, chosen, Path(out) / profile, profile, parts,
                            split_note(subset)), missing


def _deviations(chosen: list[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    """method → its deviations from its paper / official code (the table counts them; its notes file lists them)."""
    out: dict[str, tuple[str, ...]] = {}
    for m, _ in chosen:
        try:
            out.setdefault(m, tuple(get_method(m).info.deviations))
        except KeyError:
            continue
    return out
