"""``phbench sweep`` (benchmark/sweep.py): job options, the job plan, and a sweep through submitit's LocalExecutor
that is run again after one run is deleted and then does only that run."""

from __future__ import annotations

import contextlib
import pickle
from types import SimpleNamespace

import pytest
import submitit

from benchmark.cli import main
from benchmark.errors import PhbenchError
from benchmark.registry import get_table
from benchmark.sweep import (Job, JobOptions, Selection, SweepPlan, SweepResult, embedded_tables, execute,
                             make_executor, plan_sweep, sweep)

CHEAP = Selection("smoke", ["ae", "intensity"])  # the cheapest table1 rows: one tiny AE, one training-free floor


def test_options_from_a_toml_file_then_the_command_line(tmp_path):
    cfg = tmp_path / "cluster.toml"
    cfg.write_text('partition = "gpu"\ngpus = 1\ntime = 90\nmem_gb = 16\nsbatch = ["--qos=high", "--exclusive"]\n'
                   'setup = ["module load cuda"]\n')
    opts = JobOptions.load(cfg, time=30, cpus=None)
    assert (opts.partition, opts.gpus, opts.time, opts.mem_gb, opts.cpus) == ("gpu", 1, 30, 16.0, None)
    assert opts.sbatch_parameters() == {"qos": "high", "exclusive": True}
    assert opts.setup == ("module load cuda",)


@pytest.mark.parametrize("text, words", [
    ("partitoin = 'gpu'\n", ["unknown key 'partitoin'", "partition"]),
    ("time = '2h'\n", ["time must be a non-negative int"]),
    ("sbatch = '--qos=high'\n", ["sbatch must be a list of strings"]),
    ("parallel = 0\n", ["parallel must be at least 1"]),
    ("sbatch = ['--no such']\n", ["write it as --name=value"]),
    ("time = [\n", ["not valid TOML"]),
])
def test_bad_options_file_is_one_line_naming_it(tmp_path, text, words):
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(text)
    with pytest.raises(PhbenchError) as err:
        JobOptions.load(cfg)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    if "sbatch option" not in msg:
        assert str(cfg) in msg


def test_cli_refuses_tables_and_all_together(capsys):
    assert main(["sweep", "table1", "--all", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--all" in err[0]


def test_all_is_every_runnable_table_without_root():
    tables = embedded_tables()
    assert "table1" in tables and "ra-table1a" not in tables
    assert all(get_table(t).runnable and not get_table(t).needs_root for t in tables)


def test_dry_run_lists_one_job_per_model_and_run_and_jobs_pickle_small(tmp_path, capsys):
    store = tmp_path / "runs"
    assert main(["sweep", "table1", "table1-detail", "--profile", "smoke", "--methods", "ae", "intensity",
                 "--store", str(store), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # table1-detail evaluates table1's models: two models to train across both tables, four runs
    assert sum(line.startswith("train ") for line in out.splitlines()) == 2
    assert sum(line.startswith("evaluate ") for line in out.splitlines()) == 4
    assert "2 models to train (0 trained before), 4 runs to evaluate" in out
    assert not (store / "smoke" / "models").exists()  # nothing ran
    plan = plan_sweep(["table1"], CHEAP, store)
    assert all(len(pickle.dumps(job)) < 1000 for job in plan.train + plan.evaluate)  # names and keys only


def test_local_sweep_then_a_rerun_does_only_the_deleted_run(tmp_path):
    runs = tmp_path / "runs"
    opts = JobOptions(parallel=2, cpus=1)
    first = sweep(["table1"], CHEAP, executor="local", options=opts, store=runs, out=tmp_path / "out")
    assert first.ok, first.lines()
    assert [len(first.outcomes[p]) for p in ("train", "evaluate")] == [2, 2]
    trained = [t for phase in first.outcomes.values() for o in phase for t in o.trained]
    assert trained == ["ae"]  # trained once, by its train job; the evaluations only loaded it
    md = first.rendered["table1"].read_text()
    assert "| ae " in md and "| intensity " in md
    profile_store = runs / "smoke"
    models = sorted(profile_store.glob("models/*/train.json"))
    assert len(models) == 2
    ae_job, floor_job = sorted(first.plan.evaluate, key=lambda j: j.method)
    kept = (profile_store / floor_job.key / "rows.csv").stat().st_mtime_ns
    model_times = [p.stat().st_mtime_ns for p in models]

    (profile_store / ae_job.key / "rows.csv").unlink()  # an unfinished run (e.g. its job was preempted)
    again = sweep(["table1"], CHEAP, executor="local", options=opts, store=runs, out=tmp_path / "out")
    assert again.ok, again.lines()
    assert (again.plan.train, [j.key for j in again.plan.evaluate]) == ([], [ae_job.key])
    assert (again.plan.trained_before, again.plan.finished_before) == (2, 1)
    assert list(again.outcomes) == ["evaluate"] and again.outcomes["evaluate"][0].trained == []
    assert (profile_store / ae_job.key / "rows.csv").is_file()
    assert (profile_store / floor_job.key / "rows.csv").stat().st_mtime_ns == kept
    assert [p.stat().st_mtime_ns for p in models] == model_times
    assert "evaluate: 1 jobs submitted, 1 finished, 0 failed" in again.lines()


def test_a_failing_job_is_reported_with_its_log(tmp_path):
    """A job that re-plans another key than the driver's (other code or data on the node) refuses to work."""
    plan = plan_sweep(["table1"], Selection("smoke", ["intensity"]), tmp_path / "runs")
    bad = plan.evaluate[0].__class__(**{**plan.evaluate[0].__dict__, "key": "0" * 16})
    assert isinstance(bad, Job)
    (outcome,) = execute(make_executor("local", tmp_path / "logs", JobOptions(cpus=1)), [bad])
    assert "the job plans key" in outcome.error and outcome.log.is_file()
    assert "the job plans key" in outcome.log.read_text()
    result = SweepResult(SweepPlan(["table1"], plan.selection, plan.store), tmp_path / "logs", {"evaluate": [outcome]})
    failed = [line for line in result.lines() if line.startswith("FAILED")]
    assert len(failed) == 1 and str(outcome.log) in failed[0]
    assert not (tmp_path / "runs" / "smoke" / bad.key).exists()


class _VanishingSlurm(submitit.SlurmExecutor):
    """A SLURM executor whose jobs leave the queue at once and never write a result (killed, node lost)."""

    def __init__(self, folder):  # no sbatch here: nothing is submitted
        self.logs = folder
        self.submitted: list[str] = []

    @contextlib.contextmanager
    def batch(self, allow_implicit_submissions: bool = False):
        yield

    def submit(self, fn, *args, **kwargs):
        job_id = f"4242_{len(self.submitted)}"
        self.submitted.append(job_id)
        stderr = self.logs / f"{job_id}_0_log.err"
        return SimpleNamespace(job_id=job_id, done=lambda: False, paths=SimpleNamespace(stderr=stderr))


def test_a_job_that_vanishes_is_a_failure_with_its_log_and_the_driver_exits_non_zero(tmp_path, monkeypatch, capsys):
    import benchmark.sweep as sw

    fake = _VanishingSlurm(tmp_path / "logs")
    monkeypatch.setattr(sw, "make_executor", lambda kind, folder, options: fake)
    monkeypatch.setattr(sw, "_slurm_queue", lambda: set())  # squeue answers, and the job is not in it
    monkeypatch.setattr(sw.time, "sleep", lambda s: None)
    assert main(["sweep", "table1", "--profile", "smoke", "--methods", "intensity", "--executor", "slurm",
                 "--store", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                 "--logs", str(tmp_path / "logs")]) == 1
    out = capsys.readouterr().out.splitlines()
    failed = [line for line in out if line.startswith("FAILED")]
    assert fake.submitted and len(failed) == len(fake.submitted)  # every vanished job, each with its own log
    for job_id, line in zip(fake.submitted, failed):
        assert f"(job {job_id})" in line and "left the SLURM queue without a result" in line
        assert line.endswith(f"log: {tmp_path / 'logs' / f'{job_id}_0_log.err'}")
    assert any(line.startswith("not ") for line in out)  # its evaluation is not run / its run not finished
