"""``phbench`` command line (also ``python -m benchmark``).

    phbench list                                   methods, datasets, tables
    phbench table table1 [--profile auto]          train/score/render a table (skips finished runs); auto: gpu
                                                   on a CUDA device, else default (also for render, figure, sweep)
    phbench check [TABLE ...] [--profile smoke]    re-run tables and compare with results/<profile>/<table>.csv
    phbench render <table> [--profile auto]        re-render a table from its finished runs
    phbench figure <table> [--profile auto]        qualitative figure of the table's trained methods
    phbench sweep TABLE... --executor slurm|local  tables as SLURM / local jobs (submitit); a rerun does what is missing
    phbench estimate TABLE... [--profile paper]    hours per table from measured throughput (results/throughput/)
    phbench data info <dataset> --root DIR         counts per split/label + a preview PNG
    phbench data prepare <dataset> --root DIR      build the slice store ([--skip-bad] lists skipped subjects;
                                                   [--subjects FILE] your own subject split)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

from benchmark.errors import PhbenchError
from benchmark.profiles import PROFILES

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
AUTO = "auto"  # --profile of table, render, figure and sweep: "gpu" when the device is CUDA, else "default"


def resolve_profile(args: argparse.Namespace) -> None:
    """Replace ``--profile auto`` by "gpu" when the run's device (``--device``, PHBENCH_DEVICE, else CUDA when
    present: ``pick_device``) is CUDA, else by "default", and say so on stderr when it is gpu: the same command gets
    the GPU's budget on a GPU and the CPU's elsewhere. An explicit profile is left as it is."""
    if getattr(args, "profile", None) != AUTO:
        return
    import torch

    from benchmark.device import pick_device

    try:
        cuda = pick_device(args.device).type == "cuda"
    except RuntimeError:  # CUDA named but absent here (a sweep's SLURM driver): the jobs run on it; else re-raised
        cuda = torch.device(args.device or os.environ["PHBENCH_DEVICE"]).type == "cuda"
    args.profile = "gpu" if cuda else "default"
    if cuda:
        print(f"phbench: CUDA device: profile gpu (default's data, a {PROFILES['gpu'].budget_scale}x budget, its own "
              "run store); --profile default gives the CPU budget", file=sys.stderr)


def _cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from benchmark.registry import all_datasets, all_methods, all_tables
    from protocols.tables import paper_table_ids

    rows = [(n, c.info.paper, ", ".join(c.variants) or "–") for n, c in all_methods().items()]
    print(tabulate(rows, headers=["method", "paper", "variants"], tablefmt="github"))
    print()
    print(tabulate([(n, c.title or "") for n, c in all_datasets().items()], headers=["dataset", "release"],
                   tablefmt="github"))
    print()
    tables = all_tables()
    trows = [(t, s.title, ("runnable with --root: " + s.needs_root) if s.needs_root else "runnable" if s.runnable
              else s.extra.get("status", "planned")) for t, s in tables.items()]
    trows += [(t, "paper table (results/paper_tables.csv)", "reference numbers only") for t in paper_table_ids()
              if t not in tables]
    print(tabulate(trows, headers=["table", "title", "status"], tablefmt="github"))
    return 0


def _subjects(args: argparse.Namespace):
    """``--subset`` (True/False) or the rows of ``--subjects FILE``: which subjects of --root a table runs on."""
    from datasets.splits import SubjectsFile

    if args.subjects is None:
        return args.subset
    if args.subset:
        raise PhbenchError(f"--subjects {args.subjects} and --subset cannot be combined: the file is the whole split "
                           "(--subset keeps the paper's lists)")
    return SubjectsFile.read(args.subjects)


def _cmd_table(args: argparse.Namespace) -> int:
    from benchmark.runner import run_table

    res = run_table(args.table_id, profile=args.profile, store=args.store, out=args.out, methods=args.methods,
                    device=args.device, seeds=args.seeds, progress=not args.quiet, root=args.root,
                    skip_bad=args.skip_bad, subset=_subjects(args), parts=args.parts)
    for line in res.skipped_subjects:
        print(f"skipped (bad input): {line}", file=sys.stderr)
    if res.outputs.get("md"):
        print(Path(res.outputs["md"]).read_text())
        print("written: " + ", ".join(str(p) for p in res.outputs.values()))
    print(f"runs: {len(res.ran)} evaluated ({len(res.trained)} models trained, {len(res.ran) - len(res.trained)} "
          f"reused), {len(res.skipped)} already finished in {Path(args.store) / args.profile}")
    for f in res.failures:
        print(f"FAILED {f}", file=sys.stderr)
    return 1 if res.failures else 0


def load_tolerances(path: Path | None, default: float | None) -> dict[str, float | None]:
    """Per-metric tolerances (``results/tolerances.json``: keys ``table:metric_id``, ``metric_id``, ``metric``,
    ``table`` or ``default``); ``--tolerance`` overrides only the default."""
    import json

    tol: dict[str, float | None] = {"default": 0.05}
    if path is not None and path.is_file():
        try:
            tol.update({k: None if v is None else float(v) for k, v in json.loads(path.read_text()).items()
                        if not k.startswith("_")})
        except (ValueError, AttributeError) as err:
            raise PhbenchError(f"{path}: not a JSON object of tolerances ({err})") from err
    if default is not None:
        tol["default"] = default
    return tol


def _stored_tables(profile: str) -> list[str]:
    from benchmark.registry import all_tables

    return [t for t in all_tables() if (RESULTS / profile / f"{t}.csv").is_file()]


def _cmd_check(args: argparse.Namespace) -> int:
    import pandas as pd

    from benchmark.runner import run_table
    from protocols.check import check

    tables = args.table_ids or (["table1"] if args.stored else _stored_tables(args.profile)) or ["table1"]
    if args.stored and len(tables) > 1:
        raise PhbenchError("--stored names one CSV: give exactly one table id with it")
    tolerances = load_tolerances(Path(args.tolerances) if args.tolerances else RESULTS / "tolerances.json",
                                 args.tolerance)
    status = 0
    # Fresh means recomputed: by default every check trains and scores in a new temporary run store (a
    # finished run would otherwise be reused, and a change in the metric code would go unseen). --store
    # reuses a named store on purpose (e.g. to compare finished runs with the stored numbers).
    scratch = tempfile.TemporaryDirectory(prefix="phbench-check-") if args.store is None else None
    store = scratch.name if scratch is not None else args.store
    for table_id in tables:
        stored_path = Path(args.stored) if args.stored else RESULTS / args.profile / f"{table_id}.csv"
        res = run_table(table_id, profile=args.profile, store=store, out=args.out, device=args.device,
                        progress=False, root=args.root, skip_bad=args.skip_bad, subset=_subjects(args))
        if res.failures:  # the failed methods' cells show up as MISSING below; the others are still compared
            for f in res.failures:
                print(f"FAILED {table_id}: {f}", file=sys.stderr)
            status = max(status, 1)
            if args.update:
                print(f"{table_id}: not stored, a method failed", file=sys.stderr)
                continue
        if args.update:
            from benchmark.io import atomic_path

            with atomic_path(stored_path) as tmp:
                res.rows.to_csv(tmp, index=False)
            print(f"stored {len(res.rows)} rows in {stored_path}")
            continue
        if not stored_path.exists():
            print(f"{stored_path}: no stored results to compare with; run with --update to create them",
                  file=sys.stderr)
            status = 2
            continue
        stored = pd.read_csv(stored_path, keep_default_na=False, na_values=[""])
        problems = check(res.rows, stored, tolerances, se_factor=args.se_factor)
        for p in problems:
            print(f"REGRESSION {p}", file=sys.stderr)
        print(f"check {table_id} [{args.profile}]: {len(res.rows)} cells, {len(problems)} regressions")
        if problems:
            status = max(status, 1)
    return status


def _cmd_render(args: argparse.Namespace) -> int:
    from benchmark.runner import render_finished

    out, missing = render_finished(args.table_id, profile=args.profile, store=args.store, out=args.out,
                                   methods=args.methods, root=args.root, skip_bad=args.skip_bad,
                                   subset=_subjects(args), parts=args.parts)
    for m in missing:
        print(f"not finished: {m} (run `phbench table {args.table_id} --profile {args.profile}`)", file=sys.stderr)
    if out is None:
        print(f"{args.table_id}: no finished run in {Path(args.store) / args.profile}", file=sys.stderr)
        return 2
    print(Path(out["md"]).read_text())
    print("written: " + ", ".join(str(p) for p in out.values()))
    return 0


def _cmd_figure(args: argparse.Namespace) -> int:
    from benchmark.figures import table_figure

    paths = table_figure(args.table_id, profile=args.profile, store=args.store,
                         out=Path(args.out) / args.profile / f"{args.table_id}-qualitative", n=args.n,
                         device=args.device, methods=args.methods, root=args.root, skip_bad=args.skip_bad,
                         subset=_subjects(args))
    print("written: " + ", ".join(str(p) for p in paths))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from benchmark.sweep import JobOptions, Selection, embedded_tables, sweep

    if bool(args.table_ids) == args.all:
        raise PhbenchError("sweep: give table ids or --all (every runnable table that needs no --root), not both")
    options = JobOptions.load(args.config, partition=args.partition, gpus=args.gpus, time=args.time,
                              mem_gb=args.mem_gb, cpus=args.cpus, parallel=args.parallel,
                              sbatch=tuple(args.sbatch or ()), setup=tuple(args.setup or ()))
    selection = Selection(args.profile, args.methods, args.seeds, args.parts, args.root, args.skip_bad,
                          _subjects(args))
    res = sweep(embedded_tables() if args.all else args.table_ids, selection, executor=args.executor,
                options=options, store=args.store, out=args.out, logs=args.logs, device=args.device,
                dry_run=args.dry_run, keep_going=args.all)
    if args.dry_run:
        print("\n".join(res.plan.lines()))
    print("\n".join(res.lines()))
    return 0 if res.ok else 1


def _cmd_estimate(args: argparse.Namespace) -> int:
    from benchmark.estimate import run

    print(run(args.table_ids, profile=args.profile, throughput=args.throughput, device_name=args.device_name,
              root=args.root, methods=args.methods, seeds=args.seeds))
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    from datasets.info import data_info

    print(data_info(args.dataset, Path(args.root) if args.root else None, Path(args.preview) if args.preview else None,
                    recipe=args.recipe, full=args.full, skip_bad=args.skip_bad, workers=args.workers))
    return 0


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from datasets.info import prepare_report
    from datasets.splits import SubjectsFile

    print(prepare_report(args.dataset, Path(args.root) if args.root else None, recipe=args.recipe,
                         skip_bad=args.skip_bad, cache_dir=Path(args.store) if args.store else None,
                         workers=args.workers, force=args.force,
                         subjects=SubjectsFile.read(args.subjects) if args.subjects else None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="methods, datasets and tables").set_defaults(func=_cmd_list)

    def subjects_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--subjects", default=None, metavar="FILE",
                        help="your own split of --root's subjects instead of the paper's lists: a CSV with the header "
                             "subject,split (train, val or test); the rendered table names it")

    def run_opts(sp: argparse.ArgumentParser, default_profile: str) -> None:
        auto = default_profile == AUTO
        sp.add_argument("--profile", default=default_profile, choices=[*PROFILES, AUTO] if auto else list(PROFILES),
                        help="run profile (default auto: gpu when the device is CUDA, else default)" if auto
                        else f"run profile (default {default_profile})")
        sp.add_argument("--store", default=str(REPO / "runs"), help="run store folder (default: runs/)")
        sp.add_argument("--out", default=str(REPO / "out" / "tables"), help="rendered tables folder")
        sp.add_argument("--device", default=None, help="cuda, cpu, cuda:1 (default: CUDA when present)")
        sp.add_argument("--root", default=None, help="data folder, for tables on a downloaded release (phbench list)")
        sp.add_argument("--skip-bad", action="store_true",
                        help="leave out (and list) subjects with bad files instead of stopping at the first")
        sp.add_argument("--subset", action="store_true",
                        help="run on the listed subjects --root holds when it holds only part of a paper's lists")
        subjects_opt(sp)

    t = sub.add_parser("table", help="run and render a table")
    t.add_argument("table_id")
    run_opts(t, AUTO)
    t.add_argument("--methods", nargs="+", default=None, help="only these methods")
    t.add_argument("--parts", nargs="+", default=None,
                   help="only these column groups of a multi-dataset table (a part's name or a word of it, e.g. brain)")
    t.add_argument("--seeds", nargs="+", type=int, default=None, help="override the profile's seeds")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_cmd_table)

    c = sub.add_parser("check", help="compare fresh results with results/<profile>/<table>.csv")
    c.add_argument("table_ids", nargs="*", default=None,
                   help="tables to check (default: every table with a stored results/<profile>/<table>.csv)")
    run_opts(c, "smoke")
    c.set_defaults(store=None)  # a fresh temporary run store unless --store names one to reuse
    c.add_argument("--stored", default=None, help="stored CSV (default results/<profile>/<table>.csv)")
    c.add_argument("--tolerances", default=None,
                   help="JSON of per-metric absolute tolerances (default results/tolerances.json)")
    c.add_argument("--tolerance", type=float, default=None, help="override the default tolerance of that file")
    c.add_argument("--se-factor", type=float, default=2.0,
                   help="widen a cell's tolerance to this many stored bootstrap standard errors (0: off)")
    c.add_argument("--update", action="store_true", help="store the fresh results instead of comparing")
    c.set_defaults(func=_cmd_check)

    r = sub.add_parser("render", help="re-render a table from its finished runs (no training, no scoring)")
    r.add_argument("table_id")
    run_opts(r, AUTO)
    r.add_argument("--methods", nargs="+", default=None, help="only these methods")
    r.add_argument("--parts", nargs="+", default=None, help="only these column groups (as for table)")
    r.set_defaults(func=_cmd_render)

    f = sub.add_parser("figure", help="qualitative figure (input, ground truth, reconstruction, map per method)")
    f.add_argument("table_id")
    run_opts(f, AUTO)
    f.add_argument("--n", type=int, default=4, help="number of example slices (largest lesions, one per subject)")
    f.add_argument("--methods", nargs="+", default=None, help="only these methods")
    f.set_defaults(func=_cmd_figure)

    w = sub.add_parser("sweep", help="run tables as SLURM or local jobs through submitit (reruns do what is missing)")
    w.add_argument("table_ids", nargs="*", help="tables to run")
    w.add_argument("--all", action="store_true", help="every runnable table that needs no --root")
    run_opts(w, AUTO)
    w.add_argument("--methods", nargs="+", default=None, help="only these methods")
    w.add_argument("--parts", nargs="+", default=None, help="only these column groups (as for table)")
    w.add_argument("--seeds", nargs="+", type=int, default=None, help="override the profile's seeds")
    w.add_argument("--executor", choices=["slurm", "local"], default="local",
                   help="slurm: sbatch job arrays; local: processes on this machine (default)")
    w.add_argument("--dry-run", action="store_true", help="list the jobs (data stores are prepared) and stop")
    w.add_argument("--logs", default=None, help="job logs folder (default: <store>/sweeps/<time>)")
    w.add_argument("--config", default=None, help="TOML file of the job options below (README: cluster section)")
    w.add_argument("--partition", default=None, help="SLURM partition")
    w.add_argument("--gpus", type=int, default=None,
                   help="GPUs per job (default: none on SLURM, every visible one locally)")
    w.add_argument("--time", type=int, default=None, help="minutes per job (default 240; a timeout requeues it)")
    w.add_argument("--mem-gb", type=float, default=None, help="memory per SLURM job in GB")
    w.add_argument("--cpus", type=int, default=None, help="CPUs per job, also its torch threads")
    w.add_argument("--parallel", type=int, default=None,
                   help="jobs running at once (SLURM array limit, default 64; local processes, default 1)")
    w.add_argument("--sbatch", action="append", default=None, metavar="OPTION",
                   help="extra sbatch option, e.g. --sbatch=--qos=high (repeatable)")
    w.add_argument("--setup", action="append", default=None, metavar="LINE",
                   help="shell line run before each job, e.g. 'module load cuda' (repeatable)")
    w.set_defaults(func=_cmd_sweep)

    e = sub.add_parser("estimate", help="hours a table takes: its plan × measured throughput (no training)")
    e.add_argument("table_ids", nargs="+", help="tables (models and scored sets shared between them count once)")
    e.add_argument("--profile", default="paper", choices=list(PROFILES))
    e.add_argument("--throughput", default=None,
                   help="figures of scripts/bench_throughput.py --json (default results/throughput/cuda.json, "
                        "else cpu.json)")
    e.add_argument("--device-name", default=None,
                   help="use the figures of this device (a word of it: cuda, H100, cpu; default CUDA when measured)")
    e.add_argument("--root", default=None,
                   help="the release's folder: split sizes from its prepared store (default: the published sizes)")
    e.add_argument("--methods", nargs="+", default=None, help="only these methods")
    e.add_argument("--seeds", nargs="+", type=int, default=None, help="override the profile's seeds")
    e.set_defaults(func=_cmd_estimate)

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    di = dsub.add_parser("info", help="counts per split/label and a preview PNG")
    di.add_argument("--preview", default=None, help="PNG path (default: out/preview-<dataset>.png)")
    di.add_argument("--full", action="store_true", help="prepare every subject, not only a preview sample")

    def prep_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("dataset")
        sp.add_argument("--root", default=None, help="the release's root folder")
        sp.add_argument("--recipe", default=None, help="preprocessing recipe id (default: the dataset's own)")
        sp.add_argument("--skip-bad", action="store_true",
                        help="leave out (and list) subjects with bad files instead of stopping at the first")
        sp.add_argument("--workers", type=int, default=None,
                        help="processes preparing subjects (default: $PHBENCH_PREPARE_WORKERS or min(4, cores))")

    prep_opts(di)
    di.set_defaults(func=_cmd_data_info)
    dp = dsub.add_parser("prepare", help="build the slice store the suite uses; counts, path, fingerprint")
    dp.add_argument("--store", default=None, help="store cache folder (default: $PHBENCH_CACHE/stores)")
    dp.add_argument("--force", action="store_true", help="rebuild even when a cached store matches")
    subjects_opt(dp)
    prep_opts(dp)
    dp.set_defaults(func=_cmd_data_prepare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
    from benchmark.device import retain_cpu_heap

    retain_cpu_heap()  # process-wide and idempotent: the settings hold for the rest of the run
    try:
        resolve_profile(args)
        return int(args.func(args) or 0)
    except (PhbenchError, KeyError, NotImplementedError, FileNotFoundError) as err:
        if args.verbose:
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"phbench: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
