"""``phbench sweep --executor slurm`` on a real SLURM cluster: jobs submitted by submitit's SlurmExecutor as job
arrays run this venv's Python on this checkout and fill the run store. CI starts a one-node cluster on localhost
first (scripts/slurm/start.sh); without one the test skips and says how to start it."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from benchmark.runner import collect_finished
from benchmark.sweep import JobOptions, Selection, sweep

START = "start a one-node cluster with `scripts/slurm/start.sh` (as root)"


@pytest.fixture(scope="module")
def slurm_cluster() -> str:
    """The state of a node of the cluster that sbatch submits to; skips when there is none to run on."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip(f"no SLURM client (sbatch, sinfo) on PATH: {START}")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip(f"no SLURM controller answers sinfo within 30 s: {START}")
    states = out.stdout.split()
    if out.returncode != 0 or not {"idle", "mix", "alloc"} & set(states):
        why = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"node states {states or 'none'}"
        pytest.skip(f"no SLURM node up ({why}): {START}")
    return states[0]


def test_slurm_sweep_fills_the_store_and_trains_each_model_once(slurm_cluster, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    selection = Selection("smoke", ["ae", "intensity"])
    res = sweep(["table1"], selection, executor="slurm", options=JobOptions(time=10, cpus=1), store=runs, out=out)
    assert res.ok, res.lines()
    outcomes = [o for phase in ("train", "evaluate") for o in res.outcomes[phase]]
    assert [len(res.outcomes[p]) for p in ("train", "evaluate")] == [2, 2]
    assert all("_" in o.job_id for o in outcomes)  # SLURM array tasks (<job>_<task>)
    assert all(o.log.is_file() for o in outcomes)
    assert [t for o in outcomes for t in o.trained] == ["ae"]  # once, in its train job
    assert len(list((runs / "smoke").glob("models/*/train.json"))) == 2
    rows, _, missing = collect_finished("table1", profile="smoke", store=runs, methods=selection.methods)
    assert missing == [] and set(rows["method"]) == {"ae", "intensity"}
    assert res.rendered["table1"].is_file()
