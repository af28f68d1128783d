"""Run tables as cluster jobs through submitit (``phbench sweep``): SLURM job arrays, or local processes.

A sweep plans every run of its tables in the driver, with the same keys and store as ``phbench table`` (preparing
each data store once, so that jobs only open it), then runs two phases of jobs and renders:

1. one job per model to train (a distinct ``train_key``: method, variant, config, data, seed; the upstreams it
   builds on are trained inside it by :func:`benchmark.models.obtain`, each once under its own key);
2. one job per run to evaluate (:func:`benchmark.runner.run_one`), once its models are trained;
3. the rendering of each table from its finished runs, in the driver.

What is trained or finished already is never submitted, so an interrupted, preempted or partly failed sweep is
simply run again and does only what is missing. A job is a few strings (table id, profile, labels, keys, store
path); it re-plans its one run from them and refuses to work when its key differs from the driver's (other code or
other data on the node). Jobs are submitit ``Checkpointable``: a SLURM timeout or preemption requeues them, and a
training resumes from its checkpoint.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import submitit

from benchmark.errors import PhbenchError

if TYPE_CHECKING:
    from datasets.splits import SubjectsFile

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
EXECUTORS = ("slurm", "local")
SLURM_PARALLEL = 64  # array tasks running at once unless --parallel says


# ---------------------------------------------------------------------------------------------- cluster options


@dataclass(frozen=True)
class JobOptions:
    """Resources of every job of a sweep (command line over ``--config`` file over these defaults).

    ``gpus`` per job (default: none on SLURM, every visible GPU locally); ``time`` minutes per job (a SLURM timeout
    requeues the job, up to 3 times); ``mem_gb`` per job; ``cpus`` per job (also its torch threads); ``parallel``
    jobs at once (a SLURM array's ``%`` limit; local processes); ``sbatch`` extra sbatch options (``"--qos=high"``,
    ``"--exclusive"``); ``setup`` shell lines run before each job (``"module load cuda"``). ``partition``,
    ``mem_gb`` and ``sbatch`` are SLURM-only.
    """

    partition: str | None = None
    gpus: int | None = None
    time: int = 240
    mem_gb: float | None = None
    cpus: int | None = None
    parallel: int | None = None
    sbatch: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: str | Path | None = None, **given: Any) -> "JobOptions":
        """The options of a TOML file (keys as the fields above), then the ``given`` ones that are not None."""
        values: dict[str, Any] = {}
        if path is not None:
            values = _read_toml(Path(path))
        values.update({k: v for k, v in given.items() if v is not None and v != ()})
        types = {f.name: f.type for f in fields(cls)}
        for key, value in values.items():
            if key not in types:
                raise PhbenchError(f"{path or 'sweep options'}: unknown key {key!r}; known: {', '.join(types)}")
            values[key] = _checked(key, value, types[key], path)
        options = cls(**values)
        options.sbatch_parameters()  # bad sbatch lines fail before anything is planned
        return options

    def sbatch_parameters(self) -> dict[str, Any]:
        """``sbatch`` lines as submitit's ``additional_parameters``: ``--qos=high`` → qos; ``--exclusive`` a flag."""
        out: dict[str, Any] = {}
        for line in self.sbatch:
            name, eq, value = line.strip().removeprefix("#SBATCH").strip().lstrip("-").partition("=")
            if not name or " " in name:
                raise PhbenchError(f"sbatch option {line!r}: write it as --name=value or --flag")
            out[name.replace("-", "_")] = value if eq else True
        return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError as err:  # Python 3.10
        raise PhbenchError(f"{path}: reading a TOML options file needs Python 3.11 or later") from err
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise PhbenchError(f"{path}: no such options file") from err
    except tomllib.TOMLDecodeError as err:
        raise PhbenchError(f"{path}: not valid TOML ({err})") from err


def _checked(key: str, value: Any, kind: str, path: str | Path | None) -> Any:
    """``value`` as the field's type, or one line naming the file, the key and what it must be."""
    where = f"{path or 'sweep options'}: {key}"
    if "tuple" in kind:
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise PhbenchError(f"{where} must be a list of strings, not {value!r}")
        return tuple(value)
    if "str" in kind:
        if not isinstance(value, str):
            raise PhbenchError(f"{where} must be a string, not {value!r}")
        return value
    number = float if "float" in kind else int
    if isinstance(value, bool) or not isinstance(value, (int, float)) or number(value) != value or value < 0:
        raise PhbenchError(f"{where} must be a non-negative {number.__name__}, not {value!r}")
    if key in ("time", "cpus", "parallel") and value == 0:
        raise PhbenchError(f"{where} must be at least 1")
    return number(value)


# ------------------------------------------------------------------------------------------------------ jobs


class Planned(NamedTuple):
    part: Any  # protocols.tables.TablePart
    method: str
    variant: str
    seed: int
    data: Any  # its prepared store
    label: str
    plan: Any  # benchmark.runner.PlannedRun


@dataclass(frozen=True)
class Selection:
    """Which runs of the tables a sweep covers and where their data is, as for ``phbench table``."""

    profile: str = "default"
    methods: list[str] | None = None
    seeds: list[int] | None = None
    parts: list[str] | None = None
    root: str | None = None
    skip_bad: bool = False
    subset: bool | SubjectsFile = False  # a SubjectsFile (--subjects) travels by its rows

    def plans(self, table_id: str) -> Iterator[Planned]:
        """Every selected run of a table with its plan (keys, splits), as ``phbench table`` plans it."""
        from benchmark.profiles import get_profile
        from benchmark.registry import get_table
        from benchmark.runner import plan_run, planned_runs

        spec, prof = get_table(table_id), get_profile(self.profile)
        for part, method, variant, seed, data, label in planned_runs(spec, self.profile, self.root, self.methods,
                                                                     self.seeds, self.skip_bad, self.subset,
                                                                     self.parts):
            plan = plan_run(spec, method, variant, seed, prof, data, part.overrides, part.metrics or None)
            yield Planned(part, method, variant, seed, data, f"{table_id}: {label}", plan)


@dataclass(frozen=True)
class Job(submitit.helpers.Checkpointable):
    """One job: train one model (``phase="train"``, ``fold`` ≥ 0 on a cross-validated column) or evaluate one run
    (``"evaluate"``). Only names and keys travel; the job re-plans its run from them (opening the prepared store)
    and checks that it finds the driver's ``key``. Returns the labels of the models it trained."""

    phase: str
    table_id: str
    profile: str
    store: str  # the run store of the profile (absolute)
    column_group: str
    method: str
    variant: str
    seed: int
    key: str  # the train key (train) or run key (evaluate) the driver planned
    label: str
    fold: int = -1
    root: str | None = None
    skip_bad: bool = False
    subset: bool | SubjectsFile = False  # a SubjectsFile (--subjects) travels by its rows
    device: str | None = None
    threads: int | None = None

    def __call__(self) -> list[str]:
        import torch

        from benchmark.device import pick_device, retain_cpu_heap
        from benchmark.models import ModelStore, obtain
        from benchmark.profiles import get_profile
        from benchmark.registry import get_table
        from benchmark.runner import run_one
        from benchmark.runstore import RunStore

        retain_cpu_heap()
        if self.threads:
            torch.set_num_threads(self.threads)
        found = self.find()
        device = pick_device(self.device)
        if self.phase == "train":
            plan = found.plan.folds[self.fold] if self.fold >= 0 else found.plan
            return obtain(plan.model, plan.train, plan.val, ModelStore(self.store), device, progress=False).trained
        part = found.part
        _, _, trained = run_one(get_table(self.table_id), self.method, self.variant, self.seed,
                                get_profile(self.profile), found.data, RunStore(self.store), device, progress=False,
                                column_group=part.column_group, overrides=part.overrides,
                                metrics=part.metrics or None, dataset=part.dataset)
        return trained

    def find(self) -> Planned:
        """This job's run, re-planned; an error when the key differs from the driver's."""
        mine = Selection(self.profile, [self.method], [self.seed], [self.column_group] if self.column_group else None,
                         self.root, self.skip_bad, self.subset)
        hits = [p for p in mine.plans(self.table_id)
                if p.part.column_group == self.column_group and p.variant == self.variant]
        if not hits:
            raise PhbenchError(f"{self.label}: the job finds no such run in {self.table_id}")
        plan = hits[0].plan
        key = (plan.folds[self.fold] if self.fold >= 0 else plan).model.train_key if self.phase == "train" \
            else plan.spec.key
        if key != self.key:
            raise PhbenchError(f"{self.label}: the job plans key {key}, the driver planned {self.key}: the node sees "
                               "other code or data (same checkout and PHBENCH_CACHE on every node?)")
        return hits[0]

    @property
    def name(self) -> str:
        fold = f" fold {self.fold}" if self.fold >= 0 else ""
        return f"{self.phase} {self.label}{fold} [{self.key}]"


@dataclass
class SweepPlan:
    """What a sweep still has to do, and what was done before."""

    tables: list[str]
    selection: Selection
    store: Path  # the run store folder (its profile folders inside)
    train: list[Job] = field(default_factory=list)
    evaluate: list[Job] = field(default_factory=list)
    trained_before: int = 0
    finished_before: int = 0
    unavailable: dict[str, str] = field(default_factory=dict)  # table → why it cannot be planned (its data)
    needs: dict[str, list[str]] = field(default_factory=dict)  # run key → the train keys of its models

    def lines(self) -> list[str]:
        """The job list (``--dry-run``)."""
        return [job.name for job in self.train + self.evaluate]


def embedded_tables() -> list[str]:
    """The runnable tables that need no --root (``./reproduce.sh all``)."""
    from benchmark.registry import all_tables

    return [t for t, spec in all_tables().items() if spec.runnable and not spec.needs_root]


def plan_sweep(tables: list[str], selection: Selection, store: str | Path = "runs", *, device: str | None = None,
               threads: int | None = None, keep_going: bool = False) -> SweepPlan:
    """The jobs of ``tables``: one per model not trained yet (by train key, across the tables), one per run not
    finished yet (by run key). Each data store is prepared here, once. ``keep_going``: a table whose data cannot
    be prepared is listed in ``unavailable`` instead of stopping the sweep."""
    from benchmark.models import ModelStore
    from benchmark.registry import get_table
    from benchmark.runstore import RunStore

    out = SweepPlan(list(tables), selection, Path(store).resolve())
    runs = RunStore(out.store / selection.profile)
    models = ModelStore(runs.root)
    seen_models: set[str] = set()
    seen_runs: set[str] = set()
    s = selection
    for table_id in tables:
        spec = get_table(table_id)
        if not spec.runnable:
            raise PhbenchError(f"{table_id}: not runnable yet ({spec.extra.get('status', 'no protocol')})")
        try:
            planned = list(s.plans(table_id))
        except PhbenchError as err:
            if not keep_going:
                raise
            out.unavailable[table_id] = str(err)
            continue
        for p in planned:
            base = Job("evaluate", table_id, s.profile, str(runs.root), p.part.column_group, p.method, p.variant,
                       p.seed, p.plan.spec.key, p.label, root=s.root, skip_bad=s.skip_bad, subset=s.subset,
                       device=device, threads=threads)
            folds = p.plan.folds or [p.plan]
            out.needs[p.plan.spec.key] = [fold.model.train_key for fold in folds]
            for i, fold in enumerate(folds):
                key = fold.model.train_key
                if key in seen_models:
                    continue
                seen_models.add(key)
                if models.is_trained(fold.model):
                    out.trained_before += 1
                else:
                    out.train.append(replace(base, phase="train", key=key, fold=i if p.plan.folds else -1))
            if p.plan.spec.key in seen_runs:
                continue
            seen_runs.add(p.plan.spec.key)
            if runs.is_finished(p.plan.spec):
                out.finished_before += 1
            else:
                out.evaluate.append(base)
    return out


# ------------------------------------------------------------------------------------------------- executors


def make_executor(kind: str, folder: str | Path, options: JobOptions) -> submitit.Executor:
    """A submitit executor (``kind`` local or slurm) whose jobs run this Python, with this checkout importable and
    the driver's data cache."""
    from datasets.base import DEFAULT_CACHE

    setup = [f"export PHBENCH_CACHE={shlex.quote(str(Path(DEFAULT_CACHE).resolve()))}",
             f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}", *options.setup]
    if kind == "local":  # submitit hides the GPUs it is not given: every visible one unless --gpus says
        import torch

        gpus = torch.cuda.device_count() if options.gpus is None else options.gpus
        local = submitit.LocalExecutor(folder=folder, python=shlex.quote(sys.executable))
        local.update_parameters(timeout_min=options.time, gpus_per_node=gpus, setup=setup)
        return local
    slurm = submitit.SlurmExecutor(folder=folder, python=shlex.quote(sys.executable), max_num_timeout=3)
    given = {"partition": options.partition, "cpus_per_task": options.cpus,
             "mem": None if options.mem_gb is None else f"{int(options.mem_gb * 1024)}M"}
    slurm.update_parameters(time=options.time, gpus_per_node=options.gpus or None, job_name="phbench",
                            array_parallelism=options.parallel or SLURM_PARALLEL, setup=setup,
                            additional_parameters=options.sbatch_parameters(),
                            **{k: v for k, v in given.items() if v is not None})
    return slurm


@dataclass
class Outcome:
    job: Job
    job_id: str
    log: Path  # the job's stderr (<job id>_0_log.err; its stdout beside it)
    error: str = ""  # the exception's last line; empty when the job finished
    trained: list[str] = field(default_factory=list)


def execute(executor: submitit.Executor, jobs: list[Job], parallel: int = 1) -> list[Outcome]:
    """Submit ``jobs`` and wait for all: on SLURM as one job array (SLURM keeps ``parallel`` of it running), locally
    ``parallel`` processes at a time. A SLURM job that leaves the queue without a result (killed, out of memory,
    node lost) is a failure, also on clusters without accounting (where submitit cannot ask sacct)."""
    waiting = list(jobs)
    running: list[tuple[Job, Any]] = []
    on_slurm = isinstance(executor, submitit.SlurmExecutor)
    if on_slurm and waiting:
        with executor.batch():
            submitted = [executor.submit(job) for job in waiting]
        running, waiting = list(zip(waiting, submitted)), []
    outcomes: list[Outcome] = []
    absent: Counter[str] = Counter()
    delay, longest = 0.5, (10.0 if on_slurm else 2.0)  # squeue at most every 10 s
    while waiting or running:
        while waiting and len(running) < max(1, parallel):
            job = waiting.pop(0)
            running.append((job, executor.submit(job)))
        time.sleep(delay)
        delay = min(delay * 1.5, longest)
        queued = _slurm_queue() if on_slurm else None
        still = []
        for job, sub in running:
            # a SLURM job is asked about once it left the queue (so sacct is not polled for running jobs)
            if queued is None or sub.job_id not in queued:
                if sub.done():
                    outcomes.append(_outcome(job, sub))
                    continue
                absent[sub.job_id] += queued is not None
                if absent[sub.job_id] >= 2:
                    outcomes.append(Outcome(job, sub.job_id, sub.paths.stderr,
                                            "left the SLURM queue without a result (cancelled, killed or lost)"))
                    continue
            still.append((job, sub))
        running = still
    return outcomes


def _slurm_queue() -> set[str] | None:
    """Ids of the queued and running SLURM jobs (array tasks as ``<job>_<task>``); None when squeue fails."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(out.stdout.split()) if out.returncode == 0 else None


def _outcome(job: Job, sub: Any) -> Outcome:
    err = sub.exception()
    if err is None:
        return Outcome(job, sub.job_id, sub.paths.stderr, trained=list(sub.result()))
    # submitit's FailedJobError holds the job's traceback between two dashed lines, the error on its last line
    text = str(err).strip()
    parts = text.split("-" * 22 + "\n")
    trace = parts[1].strip().splitlines() if len(parts) > 2 else []
    error = trace[-1].strip() if trace else text.splitlines()[0] if text else type(err).__name__
    return Outcome(job, sub.job_id, sub.paths.stderr, error)


# --------------------------------------------------------------------------------------------------- a sweep


@dataclass
class SweepResult:
    plan: SweepPlan
    logs: Path
    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)  # phase → outcomes
    not_run: list[str] = field(default_factory=list)  # evaluations left out: their model failed to train
    rendered: dict[str, Path] = field(default_factory=dict)  # table → its Markdown
    missing: list[str] = field(default_factory=list)  # runs still not finished
    render_failures: dict[str, str] = field(default_factory=dict)  # table → why it was not rendered

    @property
    def failures(self) -> list[Outcome]:
        return [o for phase in self.outcomes.values() for o in phase if o.error]

    @property
    def ok(self) -> bool:
        """Every job finished, every run is finished and every table rendered."""
        return not (self.failures or self.missing or self.render_failures)

    def lines(self) -> list[str]:
        """The summary: jobs submitted, finished and failed per phase, each failure with its log."""
        p = self.plan
        out = [f"sweep {', '.join(p.tables)}: {len(p.train)} models to train ({p.trained_before} trained before), "
               f"{len(p.evaluate)} runs to evaluate ({p.finished_before} finished before); job logs in {self.logs}"]
        out += [f"not run: {t}: {why}" for t, why in p.unavailable.items()]
        for phase, outcomes in self.outcomes.items():
            failed = sum(bool(o.error) for o in outcomes)
            out.append(f"{phase}: {len(outcomes)} jobs submitted, {len(outcomes) - failed} finished, {failed} failed")
        out += [f"FAILED {o.job.name} (job {o.job_id}): {o.error}; log: {o.log}" for o in self.failures]
        out += [f"not evaluated (its model failed to train): {label}" for label in self.not_run]
        out += [f"not finished: {label}" for label in self.missing]
        out += [f"rendered {t}: {md}" for t, md in self.rendered.items()]
        out += [f"NOT RENDERED {t}: {why}" for t, why in self.render_failures.items()]
        return out


def run_sweep(plan: SweepPlan, executor: submitit.Executor | None, *, out: str | Path, logs: Path,
              parallel: int = 1) -> SweepResult:
    """Train, then evaluate what the plan lists (an evaluation whose model failed to train is left out); then
    render each table from its finished runs. ``executor`` may be None when the plan has no job."""
    result = SweepResult(plan, logs)
    if plan.train and executor is not None:
        result.outcomes["train"] = execute(executor, plan.train, parallel)
    failed = {o.job.key for o in result.failures}
    evaluate = [j for j in plan.evaluate if not failed.intersection(plan.needs[j.key])]
    result.not_run = [j.label for j in plan.evaluate if failed.intersection(plan.needs[j.key])]
    if evaluate and executor is not None:
        result.outcomes["evaluate"] = execute(executor, evaluate, parallel)
    for table_id in plan.tables:
        if table_id in plan.unavailable:
            continue
        try:
            md, missing = render(table_id, plan.selection, plan.store, out)
        except Exception as err:  # the jobs' summary must still be printed; a rerun renders again
            log.debug("render failed", exc_info=True)
            result.render_failures[table_id] = f"{type(err).__name__}: {err}"
            continue
        result.missing += missing
        if md is not None:
            result.rendered[table_id] = md
    return result


def render(table_id: str, selection: Selection, store: Path, out: str | Path) -> tuple[Path | None, list[str]]:
    """A table rendered from its finished runs (None when none is finished), and the labels of the others."""
    from benchmark.runner import render_finished

    s = selection
    written, missing = render_finished(table_id, profile=s.profile, store=store, out=out, methods=s.methods,
                                       seeds=s.seeds, root=s.root, skip_bad=s.skip_bad, subset=s.subset,
                                       parts=s.parts)
    return (None if written is None else Path(written["md"])), [f"{table_id}: {m}" for m in missing]


def sweep(tables: list[str], selection: Selection, *, executor: str = "local", options: JobOptions = JobOptions(),
          store: str | Path = "runs", out: str | Path = "out/tables", logs: str | Path | None = None,
          device: str | None = None, dry_run: bool = False, keep_going: bool = False) -> SweepResult:
    """Plan ``tables`` (preparing their data here), then, unless ``dry_run``, run the jobs on ``executor`` and
    render. Job logs go to ``logs`` (default ``<store>/sweeps/<time>``). Locally ``options.parallel`` defaults
    to 1 process, each with the machine's cores as torch threads (``options.cpus`` sets them)."""
    import os

    if executor not in EXECUTORS:
        raise PhbenchError(f"executor {executor!r}: one of {', '.join(EXECUTORS)}")
    parallel = options.parallel or (SLURM_PARALLEL if executor == "slurm" else 1)
    threads = options.cpus or (max(1, (os.cpu_count() or 1) // parallel) if executor == "local" else None)
    plan = plan_sweep(tables, selection, store, device=device, threads=threads, keep_going=keep_going)
    folder = (Path(logs) if logs is not None else plan.store / "sweeps" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    if dry_run:
        return SweepResult(plan, folder)
    jobs = make_executor(executor, folder, options) if plan.train or plan.evaluate else None
    return run_sweep(plan, jobs, out=out, logs=folder, parallel=parallel)
