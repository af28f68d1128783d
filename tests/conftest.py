"""Shared fixtures: a toy slice store that needs no generator, and the ../shared/data location."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from datasets.store import PreparedSlice, SliceStore, write_store

def pytest_configure(config):
    """One torch thread per test process: the tests' convolutions are tiny, and ``reproduce.sh test`` runs two
    xdist workers on two cores (two threads each would contend: measured ~40× slower on a tiny conv step)."""
    import torch

    torch.set_num_threads(1)


SHARED_DATA = Path(os.environ.get("PHBENCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


# the real releases the tests read (shared/data/README.md); a partial copy skips with the missing ones named
SHARED_SETS = ("lgg-mri-segmentation", "brain-mri-images-for-brain-tumor-detection", "brain-tumor-classification-mri",
               "ixi", "brats", "idrid", "fastmri-plus", "kermany-oct2017")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} absent (set PHBENCH_SHARED_DATA to run these tests)")
    missing = [d for d in SHARED_SETS if not (SHARED_DATA / d).is_dir()]
    if missing:
        pytest.skip(f"real data folder {SHARED_DATA} is incomplete: no {', '.join(missing)}")
    return SHARED_DATA


def toy_slices(n_train: int = 16, n_val: int = 4, n_test: int = 12, size: int = 128, seed: int = 0):
    """Disc-shaped 'brains' with smooth texture; test slices get bright blobs with masks (every other slice)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(n):
            cy, cx, r = 0.5 + rng.normal(0, 0.02), 0.5 + rng.normal(0, 0.02), 0.38 + rng.normal(0, 0.02)
            brain = (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2).astype(np.float32)
            tex = 0.4 + 0.1 * np.sin(12 * xx + rng.uniform(0, 6)) * np.cos(9 * yy + rng.uniform(0, 6))
            img = (tex + rng.normal(0, 0.01, tex.shape)) * brain
            lesion = None
            if split == "test" and i % 2 == 0:
                ly, lx, lr = cy + rng.uniform(-0.15, 0.15), cx + rng.uniform(-0.15, 0.15), rng.uniform(0.04, 0.09)
                lesion = ((((yy - ly) ** 2 + (xx - lx) ** 2) < lr**2) * brain).astype(np.uint8)
                img = np.where(lesion > 0, 0.95, img)
            out.append(PreparedSlice(img[None].astype(np.float32), brain, lesion, subject=f"{split}{i // 2}", slice=i,
                                     split=split, label=int(lesion is not None),
                                     pathology="tumour" if lesion is not None else "healthy"))
    return out


def with_aux(slices, seed: int = 0):
    """The same slices, each with a second contrast (a smooth function of the image plus noise, 0 outside)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in slices:
        brain = s.brain[None]
        aux = ((1.0 - s.image) * 0.7 + rng.normal(0, 0.01, s.image.shape)) * brain
        out.append(dataclasses.replace(s, aux=aux.astype(np.float32)))
    return out


@pytest.fixture(scope="session")
def toy_store(tmp_path_factory) -> SliceStore:
    """Toy slices with a second contrast stored beside them (Cyclic-UNet's intermediate modality): every method
    of the contract suite runs on it, and methods that ignore the auxiliary modality must not care."""
    return write_store(tmp_path_factory.mktemp("toy") / "store", with_aux(toy_slices()),
                       {"recipe": "toy@v1", "dataset": "toy"})


@pytest.fixture(scope="session")
def toy_store_256(tmp_path_factory) -> SliceStore:
    """A 256-px store (ProxyAno's size) for the contract suite: every method must run on it as well."""
    return write_store(tmp_path_factory.mktemp("toy256") / "store", with_aux(toy_slices(4, 2, 4, size=256)),
                       {"recipe": "toy@v1", "dataset": "toy256"})
