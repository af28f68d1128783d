"""The run store: evaluations of trained models, each in a folder keyed by what determines it.

    <store>/models/<train_key>/model.pt        trained method state (benchmark.models.ModelStore)
    <store>/models/<train_key>/train.json      fit report, the resolved config, provenance
    <store>/scores/<score_key>/<slices>.pt     cached maps of one slice set (benchmark.scoring.ScoreCache)
    <store>/scores/<score_key>/calibration.json
    <store>/<run_key>/rows.csv                 result rows (long format); its presence marks a finished run
    <store>/<run_key>/subjects.csv             each test subject's own value per metric (paired tests)
    <store>/<run_key>/run.json                 provenance, config, protocol info, size + sha256 of the two CSVs

Three keys: a model is trained once per ``train_key`` (method, code version, training config, data, seed,
upstreams), scored once per slice set under a ``score_key`` (+ scoring config), and every table and protocol
adds its own ``run_key`` on top. Every file is written atomically, nothing is overwritten, finished runs are
skipped. Several processes and machines may share one store: a run is evaluated under its own lock (the
runner's), a finished run is verified when read (schema and the checksums in run.json: a damaged file is one
:class:`~benchmark.errors.StoreError` line naming it, never a silently wrong table), and temporaries that
killed writers left behind are removed when the store is opened.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

import pandas as pd

from benchmark.errors import StoreError
from benchmark.io import atomic_write_text, checksum_mismatch, clean_stale, exclusive, text_sha256

RUN_FORMAT = 2  # 2: run.json records size and sha256 of rows.csv and subjects.csv (1: no record, schema checked only)

ROW_COLUMNS = [
    "table_id", "method", "variant", "dataset", "column_group", "metric", "metric_id", "value", "se", "ci_low",
    "ci_high", "scale",
    "seed", "n", "note", "run_key", "dataset_fingerprint", "protocol", "git_sha", "phbench_version", "torch",
    "device", "train_wall_s", "eval_wall_s", "peak_mem_mb", "config",
]


def with_row_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every ROW_COLUMNS column (missing ones empty) first, in order, then any extra columns."""
    frame = frame.copy()
    for col in ROW_COLUMNS:
        if col not in frame.columns:
            frame[col] = ""
    return frame[ROW_COLUMNS + [c for c in frame.columns if c not in ROW_COLUMNS]]


def key_hash(payload: Any) -> str:
    """The 16-hex-digit key of a JSON-able payload (sorted keys): every store key is made by this one function."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSpec:
    """One evaluation: a scored model (``score_key``, from ``benchmark.models.ModelSpec``) under a table's
    protocol, metric ids and options. ``config`` is the resolved config (what ran), for the rows."""

    method: str
    variant: str
    config: dict[str, Any]
    dataset_fingerprint: str
    protocol: str
    seed: int
    train_key: str
    score_key: str
    table_id: str = ""
    metrics: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        # method and variant too: two variants may share a score key (same resolved config) but are two rows
        payload = {"score": self.score_key, "method": self.method, "variant": self.variant,
                   "protocol": self.protocol, "table": self.table_id, "metrics": list(self.metrics),
                   "options": self.options, "data": self.dataset_fingerprint}
        return key_hash(payload)


# hex keys and hashes stay text: pandas would read a key like "5e21374501934412" as the float 5e+21374501934412
TEXT_COLUMNS = ("run_key", "dataset_fingerprint", "git_sha", "method", "variant", "column_group", "metric_id")


def _read_rows_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={c: str for c in TEXT_COLUMNS})


SUBJECT_COLUMNS = ["subject", "metric_id", "column_group", "value"]


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        clean_stale(self.root, depth=3)  # <run_key>/, models/<train_key>/, scores/<score_key>/

    def run_dir(self, spec: RunSpec) -> Path:
        return self.root / spec.key

    def lock(self, spec: RunSpec) -> ContextManager[None]:
        """Held while ``spec`` is evaluated: one process evaluates a run, the others then find it finished."""
        return exclusive(self.run_dir(spec) / ".run.lock", f"run {spec.key} is being evaluated")

    def is_finished(self, spec: RunSpec) -> bool:
        """Whether the run's rows are stored; a stored run that fails its check raises :class:`StoreError`."""
        if not (self.run_dir(spec) / "rows.csv").exists():
            return False
        self.read_rows(spec)
        return True

    def write_result(self, spec: RunSpec, rows: list[dict[str, Any]], info: dict[str, Any],
                     subject_rows: list[dict[str, Any]] | None = None) -> Path:
        """Write run.json (with the CSVs' checksums), subjects.csv, then rows.csv (the finish marker), each
        atomically."""
        d = self.run_dir(spec)
        d.mkdir(parents=True, exist_ok=True)
        subj = pd.DataFrame(subject_rows or [], columns=SUBJECT_COLUMNS)
        subj["run_key"] = spec.key
        frame = with_row_columns(pd.DataFrame(rows))
        frame["run_key"] = spec.key
        texts = {"subjects.csv": subj.to_csv(index=False), "rows.csv": frame.to_csv(index=False)}
        record = {"spec": spec.__dict__, "key": spec.key, "train_key": spec.train_key, **info,
                  "format": RUN_FORMAT, "files": {name: text_sha256(text) for name, text in texts.items()}}
        atomic_write_text(d / "run.json", json.dumps(record, indent=2, sort_keys=True, default=str))
        for name, text in texts.items():
            atomic_write_text(d / name, text)
        return d / "rows.csv"

    def _check_files(self, key: str) -> None:
        """The run's files against the checksums run.json recorded (runs written before there was a record: none)."""
        d = self.root / key
        run_json = d / "run.json"
        if not run_json.is_file():
            return
        try:
            files = json.loads(run_json.read_text()).get("files") or {}
        except (ValueError, AttributeError) as err:
            raise StoreError(run_json, f"unreadable run record ({err})", f"delete {d} to recompute the run") from err
        for name, rec in sorted(files.items(), key=lambda kv: kv[0] != "rows.csv"):
            why = checksum_mismatch(d / name, rec)
            if why:
                remedy = "delete it to recompute" if name == "rows.csv" else f"delete {d} to recompute the run"
                raise StoreError(d / name, why, remedy)

    def read_subjects(self, spec_or_key: RunSpec | str) -> pd.DataFrame:
        """Per-subject values of a finished run (empty for runs written before they were stored)."""
        key = spec_or_key if isinstance(spec_or_key, str) else spec_or_key.key
        p = self.root / key / "subjects.csv"
        if not p.is_file():
            return pd.DataFrame(columns=SUBJECT_COLUMNS + ["run_key"])
        self._check_files(key)
        try:
            return pd.read_csv(p, keep_default_na=False, na_values=[""],
                               dtype={"subject": str, "column_group": str, "run_key": str, "metric_id": str})
        except (OSError, ValueError) as err:
            raise StoreError(p, f"unreadable per-subject values ({type(err).__name__}: {err})",
                             f"delete {p.parent} to recompute the run") from err

    def read_rows(self, spec_or_key: RunSpec | str) -> pd.DataFrame:
        """A finished run's rows, verified: checksums (run.json), every ROW_COLUMNS column, this run's key."""
        key = spec_or_key if isinstance(spec_or_key, str) else spec_or_key.key
        path = self.root / key / "rows.csv"
        self._check_files(key)
        try:
            rows = _read_rows_csv(path)
        except (OSError, ValueError) as err:
            raise StoreError(path, f"unreadable result rows ({type(err).__name__}: {err})") from err
        missing = [c for c in ROW_COLUMNS if c not in rows.columns]
        if missing:
            raise StoreError(path, f"not a run's result rows (no column {', '.join(missing[:3])}"
                                   f"{' …' if len(missing) > 3 else ''})")
        if rows.empty or not (rows["run_key"] == key).all():
            raise StoreError(path, "holds no rows" if rows.empty else f"holds rows of another run than {key}")
        return rows

    def all_rows(self) -> pd.DataFrame:
        """Every finished run's rows (a run without rows.csv is unfinished and ignored)."""
        frames = [self.read_rows(p.parent.name) for p in sorted(self.root.glob("*/rows.csv"))]
        if not frames:
            return pd.DataFrame(columns=ROW_COLUMNS)
        return pd.concat(frames, ignore_index=True)
