"""Fault drills on a run store that many processes share (issue 20): kill -9 mid-training, two processes at once,
damaged files, a moved data folder, stale temporaries and locks, file modes.

Every drill runs the smoke profile of the two cheapest methods (``intensity``: nothing to train; ``ae`` on 32-px
toy slices, three epochs so a run can be killed between two of them) on a table built here. Subprocess workers
register that table in their own interpreter, so the suite's registry is never touched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

from benchmark.errors import DataError, StoreError
from benchmark.io import HOST, atomic_dir, atomic_path, clean_stale
from benchmark.profiles import get_profile
from benchmark.runner import run_one
from benchmark.runstore import RunStore
from datasets.store import SliceStore, write_store
from protocols.tables import TablePart, TableSpec
from tests.conftest import toy_slices

REPO = Path(__file__).resolve().parents[1]
METHODS = (("intensity", ""), ("ae", ""))
AE_EPOCHS = {"ae": {"epochs": 3, "batch_size": 4}}


def drill_table(data: SliceStore) -> TableSpec:
    """The drill table on ``data``: the two methods, image AUROC only (the cheapest protocol run)."""
    return TableSpec(table_id="drill", title="drill", dataset="toy", protocol="standard", methods=METHODS,
                     metrics=("auroc|image",), parts=(TablePart("", lambda *a, **k: data, overrides=AE_EPOCHS),))

# A worker: runs the drill table with run_table; "kill": SIGKILL itself while writing its second checkpoint (its
# temporary file stays behind); "pause": after its first checkpoint, touch <store>.paused and wait for <store>.go.
WORKER = r"""
import json, logging, os, signal, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO, format="%(message)s")
from benchmark.io import atomic_path
from benchmark.registry import register_table
from benchmark.runner import run_table
from benchmark.trainer import Trainer
from datasets.store import SliceStore
from tests.test_store_safety import drill_table

data, store, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
register_table(drill_table(SliceStore(data)))
saves = []
original = Trainer._save

def drill_save(self, *args):
    saves.append(1)
    if mode == "kill" and len(saves) == 2:
        with atomic_path(self.checkpoint) as tmp:
            tmp.write_bytes(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
    original(self, *args)
    if mode == "pause" and len(saves) == 1:
        Path(f"{store}.paused").touch()
        for _ in range(2400):
            if Path(f"{store}.go").exists():
                break
            time.sleep(0.05)

Trainer._save = drill_save
res = run_table("drill", profile="smoke", store=store, progress=False, render=False)
print(json.dumps({"ran": res.ran, "skipped": res.skipped, "trained": res.trained, "failures": res.failures,
                  "process": f"{os.uname().nodename}:{os.getpid()}"}))
"""


def _worker(data: Path, store: Path, mode: str, stderr=subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(data), str(store), mode], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _wait_for(check, what: str) -> None:
    """Poll until ``check()`` (a condition the drill waits for, not a timing it asserts)."""
    for _ in range(3000):
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"never happened: {what}")


def _trainings(store: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store / "smoke" / "models").glob("*/train.json"))]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SliceStore:
    slices = [dataclasses.replace(s, source=f"/mnt/node-a/toy/{s.subject}") for s in toy_slices(8, 2, 6, size=32)]
    return write_store(tmp_path_factory.mktemp("data") / "toy32", slices, {"recipe": "toy@v1", "dataset": "toy"})


# -- processes ---------------------------------------------------------------------------------------------------------


def test_killed_training_resumes_from_its_checkpoint_and_no_row_is_lost_or_doubled(data, tmp_path):
    store = tmp_path / "runs"
    killed = _worker(data.path, store, "kill")
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    (model_dir,) = [p for p in (store / "smoke" / "models").iterdir() if (p / "checkpoint.pt").exists()]
    assert list(model_dir.glob(".checkpoint.pt.*.tmp"))  # the write the kill interrupted
    (floor_rows,) = list((store / "smoke").glob("*/rows.csv"))  # intensity finished before ae started training
    before = floor_rows.read_bytes()

    again = _result(_worker(data.path, store, "run"))
    assert (again["skipped"], again["ran"], again["trained"], again["failures"]) == (
        ["intensity seed 0"], ["ae seed 0"], ["ae seed 0"], [])
    assert not list(model_dir.glob(".*.tmp")) and not (model_dir / "checkpoint.pt").exists()
    fit = json.loads((model_dir / "train.json").read_text())
    report = fit["fit"]
    assert report["resumed_from_epoch"] == 1 and report["epochs_run"] == 3  # the whole history, both segments
    assert [s["epochs_run"] for s in report["segments"]] == [1, 2]
    assert report["segments"][1]["process"] == again["process"] != report["segments"][0]["process"]
    assert report["wall_s"] == pytest.approx(sum(s["wall_s"] for s in report["segments"]))
    assert fit["train_wall_s"] >= report["wall_s"] - 0.01  # the row's train time covers both segments

    rows = RunStore(store / "smoke").all_rows()
    assert sorted(rows["method"]) == ["ae", "intensity"] and rows["run_key"].is_unique
    assert floor_rows.read_bytes() == before


def test_two_processes_on_one_store_train_and_evaluate_each_run_once(data, tmp_path):
    store = tmp_path / "runs"
    log = tmp_path / "second.log"
    workers = [_worker(data.path, store, "pause")]
    try:
        _wait_for(Path(f"{store}.paused").exists, "the first worker trains ae")
        with open(log, "w") as err:
            workers.append(_worker(data.path, store, "run", stderr=err))
            # the second reaches ae's run while the first still holds it, and waits for it
            _wait_for(lambda: ".run.lock" in log.read_text(), "the second worker waits for the run's lock")
            Path(f"{store}.go").touch()
            b = _result(workers[1])
        a = _result(workers[0])
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert a["ran"] == ["intensity seed 0", "ae seed 0"] and a["trained"] == ["ae seed 0"]
    assert b["ran"] == [] and b["trained"] == [] and b["skipped"] == ["intensity seed 0", "ae seed 0"]
    trainings = [t for t in _trainings(store) if t["fit"].get("segments")]  # intensity has nothing to train
    assert [[s["process"] for s in t["fit"]["segments"]] for t in trainings] == [[a["process"]]]
    rows = RunStore(store / "smoke").all_rows()
    assert len(rows) == 2 and rows["run_key"].is_unique


def test_the_lock_of_a_killed_holder_never_blocks(tmp_path):
    lock = tmp_path / "m" / ".train.lock"
    code = ("import os, signal, sys; from benchmark.io import exclusive\n"
            "with exclusive(sys.argv[1]):\n    os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(lock)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL and lock.exists()  # the holder died holding it; its file stays
    with FileLock(str(lock), timeout=30):  # acquired at once: the kernel released the dead holder's lock
        pass


# -- damaged files ---------------------------------------------------------------------------------------------------


class Drill:
    """The drill table run in this process on a copy of a finished store."""

    def __init__(self, data: SliceStore, root: Path):
        self.data, self.root, self.table = data, root, drill_table(data)

    def run(self, method: str = "ae") -> tuple:
        return run_one(self.table, method, "", 0, get_profile("smoke"), self.data, RunStore(self.root),
                       torch.device("cpu"), progress=False, overrides=AE_EPOCHS)

    def run_dir(self, method: str = "ae") -> Path:
        (d,) = [p.parent for p in self.root.glob("*/run.json") if json.loads(p.read_text())["spec"]["method"] == method]
        return d

    def model_dir(self) -> Path:
        (d,) = [p.parent for p in self.root.glob("models/*/train.json")
                if json.loads(p.read_text())["model"]["method"] == "ae"]
        return d


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    drill = Drill(data, tmp_path_factory.mktemp("finished") / "runs")
    for method, _ in METHODS:
        assert drill.run(method)[1]
    return drill.root


@pytest.fixture
def drill(data, finished, tmp_path) -> Drill:
    shutil.copytree(finished, tmp_path / "runs")
    return Drill(data, tmp_path / "runs")


def _one_line(err: pytest.ExceptionInfo, path: Path, remedy: str) -> None:
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(path)) and remedy in text, text


@pytest.mark.parametrize("damage", ["garbage", "truncated", "same size"])
def test_damaged_rows_are_one_line_naming_the_file(drill, damage):
    rows = drill.run_dir() / "rows.csv"
    raw = rows.read_bytes()
    rows.write_bytes({"garbage": b"a,b\n1,2\n", "truncated": raw[: len(raw) // 2],
                      "same size": raw.replace(b"ae", b"xx")}[damage])
    with pytest.raises(StoreError) as err:
        drill.run()
    _one_line(err, rows, "delete it to recompute")
    with pytest.raises(StoreError):
        RunStore(drill.root).all_rows()
    rows.unlink()  # the remedy: the run is evaluated again, from the stored model
    run, ran, trained = drill.run()
    assert ran and trained == [] and len(RunStore(drill.root).read_rows(run)) == 1


def test_rows_of_an_older_run_without_checksums_are_checked_for_their_schema(drill):
    run_json = drill.run_dir() / "run.json"
    record = json.loads(run_json.read_text())
    del record["files"]
    run_json.write_text(json.dumps(record))
    assert not drill.run()[1]  # still finished, still readable
    (drill.run_dir() / "rows.csv").write_text("garbage\n1\n")
    with pytest.raises(StoreError) as err:
        drill.run()
    _one_line(err, drill.run_dir() / "rows.csv", "delete it to recompute")


def test_a_damaged_model_is_one_line_and_deleting_it_retrains(drill):
    model = drill.model_dir() / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])
    (drill.run_dir() / "rows.csv").unlink()  # the run is evaluated again and reads the model
    with pytest.raises(StoreError) as err:
        drill.run()
    _one_line(err, model, "delete it to retrain")
    model.unlink()
    assert drill.run()[2] == ["ae"]


def test_a_damaged_checkpoint_trains_from_scratch_with_a_warning(drill, caplog):
    d = drill.model_dir()
    for name in ("model.pt", "train.json"):
        (d / name).unlink()
    (d / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    (drill.run_dir() / "rows.csv").unlink()
    with caplog.at_level(logging.WARNING, logger="benchmark.trainer"):
        run, ran, trained = drill.run()
    assert ran and trained == ["ae"] and not (d / "checkpoint.pt").exists()
    (warning,) = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()]
    assert warning.startswith(str(d / "checkpoint.pt")) and "from scratch" in warning
    fit = json.loads((d / "train.json").read_text())["fit"]
    assert fit["resumed_from_epoch"] is None and fit["epochs_run"] == 3


# -- slice stores ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["images.npy", "manifest.csv"])
def test_a_slice_store_changed_in_place_is_refused_when_opened(data, tmp_path, name):
    copy = tmp_path / "store"
    shutil.copytree(data.path, copy)
    assert SliceStore(copy).fingerprint == data.fingerprint
    f = copy / name
    raw = bytearray(f.read_bytes())
    raw[-20:] = bytes(b ^ 0xFF for b in raw[-20:]) if name.endswith(".npy") else raw[-20:].upper()
    f.write_bytes(bytes(raw))  # same size, other content, under the same recorded fingerprint
    with pytest.raises(DataError) as err:
        SliceStore(copy)
    _one_line(err, f, f"delete {copy} to prepare it again")


def test_a_store_of_format_1_is_upgraded_when_opened(data, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(data.path, copy)
    meta = json.loads((copy / "meta.json").read_text())
    old = {k: v for k, v in meta.items() if k != "files"}
    (copy / "meta.json").write_text(json.dumps({**old, "format": 1, "fingerprint": "path-dependent"}))
    store = SliceStore(copy)
    assert store.fingerprint == data.fingerprint
    assert json.loads((copy / "meta.json").read_text()) == meta  # verified like a new store from now on


def test_a_moved_data_folder_keeps_its_fingerprint(tmp_path):
    from datasets import phantom as ph
    from datasets.adapters.phantom import PhantomAdapter
    from datasets.base import DEFAULT_CACHE, prepare

    cached = ph.write_phantom(DEFAULT_CACHE / "phantom", **ph.phantom_sizes("smoke"))  # the suite's shared phantom
    here = tmp_path / "node-a" / "phantom"
    shutil.copytree(cached, here)  # copy2: the files keep their modification times, as a move does
    first = prepare(PhantomAdapter(here), ph.phantom_recipe("flair", 32), cache_dir=tmp_path / "cache-a")
    there = tmp_path / "node-b" / "mnt" / "phantom"
    there.parent.mkdir(parents=True)
    shutil.move(here, there)
    moved = prepare(PhantomAdapter(there), ph.phantom_recipe("flair", 32), cache_dir=tmp_path / "cache-b")
    assert moved.path != first.path and moved.manifest["source"][0].startswith(str(there))
    assert moved.fingerprint == first.fingerprint


# -- temporaries, modes --------------------------------------------------------------------------------------------


def test_stale_temporaries_are_removed_when_a_store_is_opened(tmp_path):
    d = tmp_path / "runs" / "0123456789abcdef"
    d.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    names = {f".rows.csv.{HOST}-{dead}-0badcafe.tmp": False,  # its writer is dead
             f".rows.csv.{HOST}-{os.getpid()}-0badcafe.tmp": True,  # this process writes it
             ".rows.csv.k2j4_x9a.tmp": True,  # an older version's name, fresh: maybe another machine writes it
             ".run.json.a8sk2m1q.tmp": False,  # ... and abandoned an hour ago
             ".run.lock": True, "rows.csv": True}
    for name in names:
        (d / name).write_text("x")
    hour_ago = time.time() - 3700
    os.utime(d / ".run.json.a8sk2m1q.tmp", (hour_ago, hour_ago))
    RunStore(tmp_path / "runs")
    assert {n: (d / n).exists() for n in names} == names
    (d / f".other.{HOST}-{dead}-0badcafe.tmp").mkdir()  # an atomic_dir of a dead writer
    assert [p.name for p in clean_stale(tmp_path / "runs", depth=2)] == [f".other.{HOST}-{dead}-0badcafe.tmp"]


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_outputs_are_readable_by_the_group(tmp_path, umask, file_mode, dir_mode):
    before = os.umask(umask)
    try:
        with atomic_path(tmp_path / "rows.csv") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "store") as tmp:
            np.save(tmp / "images.npy", np.zeros(2))
    finally:
        os.umask(before)
    assert (tmp_path / "rows.csv").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "store").stat().st_mode & 0o777 == dir_mode
