"""The run store: evaluations of trained models, each in a folder keyed by what determines it.

    <store>/models/<train_key>/model.pt        trained method state (benchmark.models.ModelStore)
    <store>/models/<train_key>/train.json      fit report, the resolved config, provenance
    <store>/scores/<score_key>/<slices>.pt     cached maps of one slice set (benchmark.scoring.ScoreCache)
    <store>/scores/<score_key>/calibration.json
    <store>/<run_key>/rows.csv                 result rows (long format); its presence marks a finished run
    <store>/<run_key>/subjects.csv             each test subject's own value per metric (paired tests)
    <store>/<run_key>/run.json                 provenance, config, protocol info

Three keys: a model is trained once per ``train_key`` (method, code version, training config, data, seed,
upstreams), scored once per slice set under a ``score_key`` (+ scoring config), and every table and protocol
adds its own ``run_key`` on top. Every file is written atomically, nothing is overwritten, finished runs are
skipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.io import atomic_path, atomic_write_text

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


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def run_dir(self, spec: RunSpec) -> Path:
        return self.root / spec.key

    def is_finished(self, spec: RunSpec) -> bool:
        return (self.run_dir(spec) / "rows.csv").exists()

    def write_result(self, spec: RunSpec, rows: list[dict[str, Any]], info: dict[str, Any],
                     subject_rows: list[dict[str, Any]] | None = None) -> Path:
        """Write run.json, subjects.csv, then rows.csv (the finish marker), each atomically."""
        d = self.run_dir(spec)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "run.json", json.dumps({"spec": spec.__dict__, "key": spec.key,
                                                      "train_key": spec.train_key, **info},
                                                     indent=2, sort_keys=True, default=str))
        subj = pd.DataFrame(subject_rows or [], columns=["subject", "metric_id", "column_group", "value"])
        subj["run_key"] = spec.key
        with atomic_path(d / "subjects.csv") as tmp:
            subj.to_csv(tmp, index=False)
        frame = with_row_columns(pd.DataFrame(rows))
        frame["run_key"] = spec.key
        with atomic_path(d / "rows.csv") as tmp:
            frame.to_csv(tmp, index=False)
        return d / "rows.csv"

    def read_subjects(self, spec_or_key: RunSpec | str) -> pd.DataFrame:
        """Per-subject values of a finished run (empty for runs written before they were stored)."""
        key = spec_or_key if isinstance(spec_or_key, str) else spec_or_key.key
        p = self.root / key / "subjects.csv"
        if not p.is_file():
            return pd.DataFrame(columns=["subject", "metric_id", "column_group", "value", "run_key"])
        return pd.read_csv(p, keep_default_na=False, na_values=[""],
                           dtype={"subject": str, "column_group": str, "run_key": str, "metric_id": str})

    def read_rows(self, spec_or_key: RunSpec | str) -> pd.DataFrame:
        key = spec_or_key if isinstance(spec_or_key, str) else spec_or_key.key
        return _read_rows_csv(self.root / key / "rows.csv")

    def all_rows(self) -> pd.DataFrame:
        """Every finished run's rows (a run without rows.csv is unfinished and ignored)."""
        frames = [_read_rows_csv(p) for p in sorted(self.root.glob("*/rows.csv"))]
        if not frames:
            return pd.DataFrame(columns=ROW_COLUMNS)
        return pd.concat(frames, ignore_index=True)
