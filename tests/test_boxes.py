"""protocols.boxes: suite vs RA-code box scoring on hand-made examples (RA paper Fig. 7 style)."""

import math

import numpy as np
import pytest

from protocols.boxes import Box, localise


def _case():
    maps = np.zeros((1, 1, 20, 20))
    healthy = np.zeros_like(maps); healthy[0, 0, :, 10:] = 1
    box = np.zeros((20, 20)); box[2:6, 2:6] = 1  # 16 px
    maps[0, 0, 2:4, 2:6] = 0.5  # 8 px fire in the box: A = 4.0
    maps[0, 0, 0:2, 10:20] = 0.9  # 20 px on healthy tissue: H = 18.0
    return maps, healthy, box


def test_suite_variant():
    maps, healthy, box = _case()
    r = localise(maps, [Box(0, box, "mass"), Box(0, box, "art", counted=False)], healthy, 0.1)
    b = r["per_box"].iloc[0]
    assert b["detected"] == 1 and b["fp"] == pytest.approx(18.0 / 4.0)
    assert r["f1"] == pytest.approx(2 / (2 + 4.5)) and r["detected_boxes"] == 1 and r["n_boxes"] == 1
    assert r["per_pathology"].iloc[0]["rate"] == 1.0


def test_ra_code_variant_floor_and_soft_box():
    maps, healthy, box = _case()
    r = localise(maps, [Box(0, box, "mass")], healthy, 0.1, variant="ra_code")
    assert r["per_box"].iloc[0]["fp"] == 4.0  # floor(18 / max(4, 1))
    assert r["f1"] == pytest.approx(2 / (2 + 4), abs=1e-6)
    soft = box.copy(); soft[1, 2:6] = 0.2; soft[6, 2:6] = 0.2  # soft edges count in n_box (24 px)
    r2 = localise(maps, [Box(0, soft, "mass")], healthy, 0.1, variant="ra_code")
    assert r2["per_box"].iloc[0]["n_box"] == 24


def test_missed_box_and_errors():
    maps, healthy, box = _case()
    r = localise(maps, [Box(0, box, "mass")], healthy, 0.6)  # nothing in the box fires
    assert r["detected_boxes"] == 0 and r["f1"] == 0.0 and math.isinf(r["per_box"].iloc[0]["fp"])
    with pytest.raises(ValueError):
        localise(maps, [Box(3, box, "mass")], healthy, 0.1)
    with pytest.raises(ValueError):
        localise(maps, [Box(0, box, "mass")], healthy, 0.1, variant="x")
