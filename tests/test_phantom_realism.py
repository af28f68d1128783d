"""scripts/phantom_realism.py's measures on the smoke phantom: identical sets agree, a contrast change is caught,
the brain is cut from the scalp. No training (the AE rows are left out)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from datasets import phantom

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "phantom_realism.py"
_spec = importlib.util.spec_from_file_location("phantom_realism", _PATH)
pr = sys.modules.setdefault("phantom_realism", importlib.util.module_from_spec(_spec))  # dataclasses look it up
_spec.loader.exec_module(pr)


@pytest.fixture(scope="module")
def smoke_t1(tmp_path_factory):
    store = phantom.phantom_store("smoke", modality="t1", cache_dir=tmp_path_factory.mktemp("phantom"))
    return pr.slices_of("phantom", store.split("train", label=0), scalp=False, spacing_mm=phantom.SPACING_MM)


def _rows(rows):
    return {r.measure: r for r in rows}


def test_identical_sets_agree(smoke_t1):
    rows = _rows(pr.compare(smoke_t1, smoke_t1, "t1"))
    assert smoke_t1.region.any(axis=(1, 2)).all()  # the phantom's brain is always found
    for r in rows.values():
        if "phantom↔real" in r.measure:  # between the sets: pooled distance 0; subject pairs no farther than within
            assert r.verdict == "similar"
            assert "pooled" not in r.measure or r.phantom == pytest.approx(0.0, abs=1e-9)
        elif r.real:
            assert r.ratio == pytest.approx(1.0)
            assert r.verdict in ("similar", "")


def test_contrast_change_is_detected(smoke_t1):
    darker = dataclasses.replace(smoke_t1, image=smoke_t1.image ** 3)  # GM and CSF fall further below WM
    rows = _rows(pr.compare(darker, smoke_t1, "t1"))
    assert rows["GM / WM"].ratio < 1.0 / pr.BAND and rows["GM / WM"].verdict == "unlike"
    assert rows["W1 phantom↔real pooled | larger within"].verdict == "unlike"
    assert rows["brain p50"].verdict == "unlike"
    unknown = _rows(pr.compare(smoke_t1, dataclasses.replace(smoke_t1, spacing_mm=None), "t1"))
    assert {unknown[k].verdict for k in pr.SPACING_ROWS} == {"n/c"}


def test_adjacent_pairs_stay_within_a_subject(smoke_t1):
    pairs = pr.adjacent_pairs(smoke_t1)
    n_subjects = len(smoke_t1.subjects)
    assert len(pairs) == len(smoke_t1.image) - n_subjects  # every subject's slab is contiguous
    assert all(smoke_t1.subject[a] == smoke_t1.subject[b] for a, b in pairs)


def test_brain_region_cuts_the_brain_from_the_scalp():
    yy, xx = np.mgrid[:128, :128]
    r = np.hypot(yy - 64, xx - 64)
    head = r < 56
    brain = r < 44
    image = np.where(brain, 0.5, 0.0) + np.where((r >= 50) & head, 0.9, 0.0)  # scalp ring, dark skull between
    image = image + np.random.default_rng(0).normal(0.0, 0.01, image.shape) * head
    got = pr.brain_region(image.astype(np.float32), head.astype(np.float32), scalp=True)
    assert (got & brain).sum() / (got | brain).sum() > 0.9
    assert not (got & (r >= 50)).any()
    # no brain inside the scalp at all: nothing is found rather than the scalp
    ring = np.where((r >= 50) & head, 0.9, 0.05).astype(np.float32)
    assert not pr.brain_region(ring, head.astype(np.float32), scalp=True).any()
