"""The run store: one folder per run, keyed by what determines its result.

    <store>/<run_key>/checkpoint.pt   trainer checkpoint (resume after interruption)
    <store>/<run_key>/model.pt        trained method state (weights_only loadable)
    <store>/<run_key>/rows.csv        result rows (long format); its presence marks a finished run
    <store>/<run_key>/run.json        provenance, config, fit report

Every file is written atomically, runs never overwrite each other, and a rerun skips finished runs.
``run_key = sha256(method, variant, config, dataset fingerprint, protocol, seed, code version)[:16]``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

import benchmark
from benchmark.io import atomic_path, atomic_write_text

ROW_COLUMNS = [
    "table_id", "method", "variant", "dataset", "column_group", "metric", "metric_id", "value", "se", "scale",
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


@dataclass(frozen=True)
class RunSpec:
    method: str
    variant: str
    config: dict[str, Any]
    dataset_fingerprint: str
    protocol: str
    seed: int
    code_version: str = benchmark.__version__

    @property
    def key(self) -> str:
        payload = json.dumps(
            {"method": self.method, "variant": self.variant, "config": self.config,
             "data": self.dataset_fingerprint, "protocol": self.protocol, "seed": self.seed,
             "code": self.code_version},
            sort_keys=True, default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def run_dir(self, spec: RunSpec) -> Path:
        return self.root / spec.key

    def is_finished(self, spec: RunSpec) -> bool:
        return (self.run_dir(spec) / "rows.csv").exists()

    def checkpoint_path(self, spec: RunSpec) -> Path:
        return self.run_dir(spec) / "checkpoint.pt"

    def model_path(self, spec: RunSpec) -> Path:
        return self.run_dir(spec) / "model.pt"

    def write_result(self, spec: RunSpec, rows: list[dict[str, Any]], info: dict[str, Any]) -> Path:
        """Write run.json then rows.csv (the finish marker), each atomically."""
        d = self.run_dir(spec)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "run.json", json.dumps({"spec": spec.__dict__, "key": spec.key, **info},
                                                      indent=2, sort_keys=True, default=str))
        frame = with_row_columns(pd.DataFrame(rows))
        frame["run_key"] = spec.key
        with atomic_path(d / "rows.csv") as tmp:
            frame.to_csv(tmp, index=False)
        return d / "rows.csv"

    def read_rows(self, spec_or_key: RunSpec | str) -> pd.DataFrame:
        key = spec_or_key if isinstance(spec_or_key, str) else spec_or_key.key
        return pd.read_csv(self.root / key / "rows.csv", keep_default_na=False, na_values=[""])

    def all_rows(self) -> pd.DataFrame:
        """Every finished run's rows (a run without rows.csv is unfinished and ignored)."""
        frames = [pd.read_csv(p, keep_default_na=False, na_values=[""]) for p in sorted(self.root.glob("*/rows.csv"))]
        if not frames:
            return pd.DataFrame(columns=ROW_COLUMNS)
        return pd.concat(frames, ignore_index=True)
