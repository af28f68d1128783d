"""RA's evaluation inputs as its code builds them: soft box masks, its box list, its global-detection lists and
its threshold search on the normal test slices (``protocols/ra.md`` §5-6, ``protocols.suites`` localisation v4).

Every expected number here is worked out by hand in the comments.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from datasets.store import BoxRecord, box_label
from protocols import thresholds as T
from protocols.suites import TensorSlices, manifest_boxes, run_localisation
from tests.test_protocols import _Fake


def _box(x, y, w, h, label="mass", index=0, hw=(320, 320), size=128):
    s = size / hw[0]
    xyxy = [int(np.floor(x * s)), int(np.floor(y * s)), int(np.ceil((x + w) * s)), int(np.ceil((y + h) * s))]
    return BoxRecord(xyxy, label, index, [x, y, w, h], list(hw)).to_json()


def _manifest(rows):
    return pd.DataFrame([{"subject": s, "slice": 0, "split": "test", "label": lab, "pathology": p,
                          "boxes": json.dumps(b), "source": ""} for s, lab, p, b in rows])


def test_box_label_and_record_round_trip():
    assert box_label("Extra-axial mass") == "extra-axial_mass"
    assert box_label("  Posttreatment   change ") == "posttreatment_change"
    rec = BoxRecord.parse(_box(100, 50, 25, 25))
    assert rec.xyxy == [40, 20, 50, 30] and rec.label == "mass" and rec.source_hw == [320, 320]
    assert BoxRecord.parse([1, 2, 3, 4]).to_json() == [1, 2, 3, 4]  # a component box stays a bare rectangle


def test_soft_box_is_the_bilinear_resize_of_the_320_rectangle():
    # x = 101..125, y = 51..75 at 320 px → 128 px: output column j samples 2.5 (j + 0.5) − 0.5, no antialias.
    # j = 39 → 98.25 (both neighbours outside) = 0; j = 40 → 100.75: 0.25·v[100] + 0.75·v[101] = 0.75;
    # j = 41…49 → inside = 1; j = 50 → 125.75: 0.25·v[125] + 0.75·v[126] = 0.25; j = 51 → 127.25 = 0.
    # Rows alike (20: 0.75, 21…29: 1, 30: 0.25); corners are the products (0.5625, 0.1875, 0.0625).
    m = _manifest([("a", 1, "mass", [_box(101, 51, 25, 25)])])
    (box,), union, note = manifest_boxes(m, (128, 128), soft=True)
    edge = np.array([0.75] + [1.0] * 9 + [0.25], np.float32)
    want = np.zeros((128, 128), np.float32)
    want[20:31, 40:51] = np.outer(edge, edge)
    np.testing.assert_allclose(box.mask, want, atol=1e-6)
    assert np.count_nonzero(box.mask) == 121 and note == ""
    np.testing.assert_allclose(union[0, 0], want, atol=1e-6)  # the soft union: RA binarises 1 − it at 0.5
    (hard,), hard_union, _ = manifest_boxes(m, (128, 128))  # the suite's box: the stored (outward) rectangle
    assert hard.mask.sum() == 121 and hard.mask[30, 50] == 1.0 and hard_union.max() == 1.0


def test_box_list_selects_names_groups_and_counts_missing_boxes():
    m = _manifest([
        ("f1", 1, "mass", [_box(10, 10, 40, 40, "mass", 0), _box(200, 200, 40, 40, "mass", 1),
                           _box(100, 100, 30, 30, "edema", 0)]),
        ("f2", 1, "possible artifact", [_box(60, 60, 40, 40, "possible_artifact", 0)]),
    ])
    listed = [["f1", "mass", 1, "mass", True], ["f1", "edema", 0, "edema", True],
              ["f2", "possible_artifact", 0, "(not reported)", False], ["f3", "mass", 0, "mass", True]]
    boxes, union, note = manifest_boxes(m, (128, 128), box_list=listed)
    assert [(b.image_index, b.pathology, b.counted) for b in boxes] == [
        (0, "mass", True), (0, "edema", True), (1, "(not reported)", False)]
    assert "2 of the 3 listed boxes found" in note and "f3 mass #0" in note
    # every annotated box leaves the healthy tissue, listed or not (mass #0 is not listed)
    assert union[0, 0, 5, 5] == 1.0 and union[0, 0, 90, 90] == 1.0


class _Constant(_Fake):
    """map = the input image (so each slice's map is what the test writes into it)."""

    def __init__(self):
        super().__init__("identity")


def _slices(values, subjects, labels, boxes=None):
    n = len(values)
    img = torch.stack([torch.full((1, 128, 128), float(v)) for v in values])
    man = _manifest([(s, lab, "x", b) for s, lab, b in zip(subjects, labels, boxes or [[]] * n)])
    return TensorSlices(img, torch.ones(n, 1, 128, 128), torch.zeros(n, 1, 128, 128), torch.tensor(labels), man)


def test_global_detection_by_subject_lists_ignores_slice_labels():
    # map means: normals n1 .1, n2 .3; group A: a1 .2, a2 .4; group B: b1 .5; x (in no list) .9 is left out.
    # AUROC A: pairs (a, n) won: .2>.1, .4>.1, .4>.3 → 3/4; B: .5 beats both → 1; average .875.
    test = _slices([0.1, 0.3, 0.2, 0.4, 0.5, 0.9], ["n1", "n2", "a1", "a2", "b1", "x"], [0, 1, 0, 1, 1, 1])
    sets = {"normal": ["n1", "n2"], "A": ["a1", "a2"], "B": ["b1"]}
    ev = run_localisation(_Constant(), test, None, ["auroc|image|map_mean"], {"global_sets": sets}, progress=False,
                          n_boot=0)
    got = {r["column_group"]: r["value"] for r in ev.rows}
    assert got == pytest.approx({"A": 0.75, "B": 1.0, "average": 0.875})


def test_ra_threshold_search_runs_on_the_normal_test_slices_and_records_its_curve():
    # normal test maps 0.0037 and 0.0102 everywhere: mean FPR(t) = 100 % for t < 0.0037, 50 % up to 0.0102 →
    # the smallest grid t with mean ≤ 5 % is 0.010 (float32(0.0102) > float32(0.010)? yes → 50 %; 0.011 → 0 %).
    box = [_box(0, 0, 320, 320, "mass", 0)]
    test = _slices([0.0037, 0.0102, 0.5], ["n1", "n2", "p"], [0, 0, 1], [[], [], box])
    val = _slices([0.9, 0.9], ["v1", "v2"], [0, 0])
    opts = {"global_sets": {"normal": ["n1", "n2"]}, "ra_threshold_on": "test_normal",
            "box_list": [["p", "mass", 0, "mass", True]], "box_group": "local pathology"}
    ids = ["detected_boxes|fpr@5%_healthy_image|ra_code", "detected_boxes|fpr@5%_healthy_image"]
    ev = run_localisation(_Constant(), test, val, ids, opts, progress=False, n_boot=0)
    rows = {(r["metric_id"], r["column_group"]): r for r in ev.rows}
    ra = rows[("detected_boxes|fpr@5%_healthy_image|ra_code", "local pathology")]
    assert "threshold 0.011" in ra["note"] and "2 normal test slices" in ra["note"] and ra["value"] == 1
    search = ev.info["ra_threshold_search"]
    assert search["on"] == "normal test" and search["threshold"] == pytest.approx(0.011)
    grid, curve = T.ra_code_grid_fpr(test.image[:2])
    assert len(search["mean_fpr_percent"]) == 1000 and search["mean_fpr_percent"] == pytest.approx(curve.tolist())
    assert curve[3] == 100.0 and curve[4] == 50.0 and curve[10] == 50.0 and curve[11] == 0.0
    # the suite id calibrates on the validation normals (0.9 everywhere → threshold 0.9, the 0.5 box never fires)
    suite = rows[("detected_boxes|fpr@5%_healthy_image", "local pathology")]
    assert suite["value"] == 0 and "healthy validation" in suite["note"]


def test_no_normal_test_slice_gives_nan_with_a_reason():
    box = [_box(0, 0, 320, 320, "mass", 0)]
    test = _slices([0.5], ["p"], [1], [box])
    ev = run_localisation(_Constant(), test, None, ["f1|per_box|fpr@5%_healthy_image|ra_code"],
                          {"ra_threshold_on": "test_normal", "global_sets": {"normal": ["n"]}}, progress=False,
                          n_boot=0)
    (row,) = ev.rows
    assert math.isnan(row["value"]) and "no normal test slices" in row["note"]
