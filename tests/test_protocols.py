"""protocols.evaluate (metric ids → rows) and protocols.suites (standard, synthetic, localisation).

Fake methods with known maps make the expected numbers computable independently of the protocol code.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from benchmark.contract import Method, MethodConfig, MethodInfo, ScoreOutput, SliceBatch, Variant
from datasets.synthetic import make_synthetic
from protocols import metrics as M
from protocols.evaluate import METRIC_BUILDERS, MetricContext, ScoreSet, metric_rows
from protocols.suites import PROTOCOLS, manifest_boxes, run_localisation, run_synthetic, synthetic_set


def _score_set(n_subjects=8, per_subject=4, seed=0, size=32, lesions=True):
    g = torch.Generator().manual_seed(seed)
    n = n_subjects * per_subject
    labels = torch.tensor([(i // per_subject + i) % 2 for i in range(n)]) if lesions else torch.zeros(n, dtype=torch.long)
    lesion = torch.zeros(n, 1, size, size)
    for i in torch.nonzero(labels).flatten():
        r = 3 + int(i) % 9  # lesions of different areas
        lesion[i, :, 8:8 + r, 8:8 + r] = 1.0
    images = torch.rand(n, 1, size, size, generator=g) * 0.5 + 0.5 * lesion
    maps = torch.rand(n, 1, size, size, generator=g) + 0.6 * lesion
    brain = torch.zeros(n, 1, size, size)
    brain[:, :, 2:-2, 2:-2] = 1.0
    recon = images * (1 - lesion) + 0.25 * lesion
    manifest = pd.DataFrame({"subject": np.repeat([f"s{k}" for k in range(n_subjects)], per_subject),
                             "slice": np.tile(np.arange(per_subject), n_subjects),
                             "label": labels.numpy(), "pathology": np.where(labels.numpy() == 1, "tumour", "healthy")})
    return ScoreSet(maps, maps.flatten(1).amax(1), labels, lesion, brain, images, recon, manifest, 0.0)


def _healthy_val(seed=5):
    v = _score_set(seed=seed, lesions=False)
    return v


def test_every_registered_id_gives_a_value_or_says_why():
    test, val = _score_set(), _healthy_val()
    out = metric_rows(MetricContext(test, val, clean=test.images), list(METRIC_BUILDERS), n_boot=30)
    assert len(out.rows) == len(METRIC_BUILDERS)
    for r in out.rows:
        assert math.isfinite(r["value"]) or r["note"], r["metric_id"]
        if math.isfinite(r["se"]):
            assert r["ci_low"] <= r["ci_high"]
    by = {r["metric_id"]: r for r in out.rows}
    assert "LPIPS" in by["lpips|inside_mask"]["note"] and math.isnan(by["lpips|inside_mask"]["value"])
    assert math.isfinite(by["mse|inside_mask"]["value"]) and math.isfinite(by["ssim|normal_brain"]["value"])


def test_unknown_metric_id_raises_before_anything_runs():
    with pytest.raises(KeyError, match="no computation"):
        metric_rows(MetricContext(_score_set(), None), ["auroc|image", "dice|made_up_rule"])


def test_values_match_the_metric_functions():
    test, val = _score_set(), _healthy_val()
    by = {r["metric_id"]: r for r in metric_rows(MetricContext(test, val), [
        "auroc_pixel|pooled_brain", "ap_pixel|pooled_brain", "dice|fpr@5%_healthy_image",
        "dice|per_image|oracle_test|itermask2", "mse|inside_mask"], n_boot=0).rows}
    a, p = M.pooled_pixel_auroc_ap(test.maps, test.lesion, valid=test.brain > 0.5)
    assert by["auroc_pixel|pooled_brain"]["value"] == pytest.approx(a, abs=1e-12)
    assert by["ap_pixel|pooled_brain"]["value"] == pytest.approx(p, abs=1e-12)
    t = M.threshold_at_fpr(val.maps, 0.05)
    assert by["dice|fpr@5%_healthy_image"]["value"] == pytest.approx(M.dice(test.maps > t, test.lesion), abs=1e-12)
    err = (test.images.double() - test.reconstructions.double()) ** 2  # IterMask2's map, from the reconstruction
    # half the slices are healthy: one without prediction has Dice 0/0, and the code's mean keeps it (NaN, said why)
    np.testing.assert_equal(by["dice|per_image|oracle_test|itermask2"]["value"],
                            M.itermask2_code_metrics(err, test.lesion, test.brain)["dice"])
    if math.isnan(by["dice|per_image|oracle_test|itermask2"]["value"]):
        assert "0/0" in by["dice|per_image|oracle_test|itermask2"]["note"]
    assert "synthetic" in by["mse|inside_mask"]["note"]  # no clean originals outside the synthetic protocol


def test_per_subject_values_are_the_metric_on_that_subject_alone():
    test, val = _score_set(), _healthy_val()
    out = metric_rows(MetricContext(test, val), ["auroc|image", "dice|fpr@5%_healthy_brain"], n_boot=0)
    subj = pd.DataFrame(out.subject_rows)
    t = M.threshold_at_fpr(val.maps, 0.05, valid=val.brain > 0.5)
    for s in ("s0", "s3"):
        idx = np.flatnonzero(test.manifest["subject"] == s)
        dice = M.dice((test.maps[idx] > t) & (test.brain[idx] > 0.5), test.lesion[idx])  # inside the brain
        got = subj[(subj.subject == s) & (subj.metric_id == "dice|fpr@5%_healthy_brain")]["value"].item()
        assert got == pytest.approx(dice, abs=1e-12)
        auc = roc_auc_score(test.labels[idx].numpy(), test.scores[idx].numpy())
        got = subj[(subj.subject == s) & (subj.metric_id == "auroc|image")]["value"].item()
        assert got == pytest.approx(auc, abs=1e-12)


def test_bootstrap_ci_brackets_the_value_and_narrows_with_more_subjects():
    few = {r["metric_id"]: r for r in metric_rows(MetricContext(_score_set(n_subjects=6), None),
                                                  ["auroc_pixel|pooled"], n_boot=200).rows}["auroc_pixel|pooled"]
    many = {r["metric_id"]: r for r in metric_rows(MetricContext(_score_set(n_subjects=60), None),
                                                   ["auroc_pixel|pooled"], n_boot=200).rows}["auroc_pixel|pooled"]
    for r in (few, many):
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    assert (many["ci_high"] - many["ci_low"]) < (few["ci_high"] - few["ci_low"])


# ----------------------------------------------------------------------------------------------------
# protocols on fake methods
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom():
    from datasets.phantom import phantom_store

    return phantom_store("smoke", modality="flair")


class _Fake(Method):
    """map = |x − recon| with recon = the input (identity) or = the lesion mask as the map (oracle)."""

    name = "fake"
    Config = MethodConfig
    info = MethodInfo(paper="test", summary="test double")
    variants = {"oracle": Variant(uses_lesion_mask=True)}  # the map is the ground truth: it must declare so

    def __init__(self, mode: str):
        super().__init__(MethodConfig(), variant="oracle" if mode == "oracle" else "", device="cpu")
        self.mode = mode

    def networks(self):
        return {}

    def fit(self, train, val=None, *, trainer=None):
        return {}

    def _score(self, batch: SliceBatch) -> ScoreOutput:
        if self.mode == "oracle":
            m = batch.lesion_mask.float()
            return ScoreOutput(anomaly_map=m, image_score=m.flatten(1).mean(1), reconstruction=batch.image)
        return ScoreOutput(anomaly_map=batch.image.clone(), image_score=batch.image.flatten(1).mean(1),
                           reconstruction=batch.image.clone())


def test_synthetic_protocol_scores_the_cached_corruptions(phantom, tmp_path):
    test, val = phantom.split("test"), phantom.split("val", label=0)
    ids = ("mse|inside_mask", "mse|outside_mask", "auprc|pooled")
    ev = run_synthetic(_Fake("identity"), test, val, ids, {"preset": "ra", "cache_dir": tmp_path}, progress=False,
                       n_boot=0)
    rows = pd.DataFrame(ev.rows)
    assert set(rows["column_group"]) == {"sprites", "copy_paste"}
    # identity reconstruction of the corrupted slice: its error is exactly the corruption
    healthy = test.subset(np.flatnonzero(test.manifest["label"].to_numpy() == 0))
    clean = np.asarray(healthy.store.images[healthy.rows], dtype=np.float64)
    corrupted, masks, record = make_synthetic(clean.astype(np.float32), kind="sprites", params="ra", seed=2109)
    err = (corrupted.astype(np.float64) - clean) ** 2
    inside = [(e[m > 0.5]).mean() for e, m in zip(err, masks) if m.sum()]
    got = rows[(rows.column_group == "sprites") & (rows.metric_id == "mse|inside_mask")]["value"].item()
    assert got == pytest.approx(np.mean(inside), rel=1e-5)
    assert rows[(rows.metric_id == "mse|outside_mask")]["value"].abs().max() < 1e-12  # untouched outside
    cached = sorted(tmp_path.glob("synthetic-sprites-ra-*.npz"))
    assert len(cached) == 1 and json.loads(cached[0].with_suffix(".json").read_text())["seed"] == 2109
    again = synthetic_set(test, "sprites", "ra", 2109, tmp_path)
    np.testing.assert_array_equal(again[2], masks)


def test_localisation_with_a_perfect_map_detects_every_box(phantom):
    test, val = phantom.split("test"), phantom.split("val", label=0)
    ids = PROTOCOLS["localisation"].metric_ids
    ev = run_localisation(_Fake("oracle"), test, val, ids, {"fpr": 0.05}, progress=False, n_boot=0)
    rows = pd.DataFrame(ev.rows)
    overall = rows[rows.column_group == ""].set_index("metric_id")["value"]
    boxes, _, _ = manifest_boxes(test.manifest, tuple(test.store.images.shape[-2:]))
    assert overall["detected_boxes|fpr@5%_healthy_image"] == len(boxes) > 0
    assert overall["detection_rate|per_box|fpr@5%_healthy_image"] == 1.0
    assert overall["f1|per_box|fpr@5%_healthy_image"] == 1.0  # nothing fires on healthy tissue
    glob = rows[rows.metric_id == "auroc|image|map_mean"].set_index("column_group")["value"]
    assert set(glob.index) == set(test.manifest.loc[test.manifest.label == 1, "pathology"]) | {"average"}
    assert (glob == 1.0).all()


def test_localisation_without_validation_says_why(phantom):
    test = phantom.split("test")
    ev = run_localisation(_Fake("oracle"), test, None, ("f1|per_box|fpr@5%_healthy_image",), {}, progress=False,
                          n_boot=0)
    assert math.isnan(ev.rows[0]["value"]) and "validation" in ev.rows[0]["note"]


def test_image_space_and_latent_scores():
    test = _score_set()
    by = {r["metric_id"]: r for r in metric_rows(MetricContext(test, None),
                                                 ["auroc|image|recon_frobenius", "auroc|image|eq13"], n_boot=0).rows}
    frob = (test.images - test.reconstructions).flatten(1).norm(dim=1)
    assert by["auroc|image|recon_frobenius"]["value"] == pytest.approx(
        roc_auc_score(test.labels.numpy(), frob.numpy()), abs=1e-12)
    assert math.isnan(by["auroc|image|eq13"]["value"]) and "latent" in by["auroc|image|eq13"]["note"]
    test.extras["latent_score"] = -frob
    by = {r["metric_id"]: r for r in metric_rows(MetricContext(test, None), ["auroc|image|eq13"], n_boot=0).rows}
    assert by["auroc|image|eq13"]["value"] == pytest.approx(1 - roc_auc_score(test.labels.numpy(), frob.numpy()))


def test_global_detection_groups_pathologies(phantom):
    test, val = phantom.split("test"), phantom.split("val", label=0)
    present = sorted(set(test.manifest.loc[test.manifest.label == 1, "pathology"]))
    groups = {"global pathologies": present[:1], "other": present[1:]}
    ev = run_localisation(_Fake("oracle"), test, val, ("auroc|image|map_mean",), {"global_groups": groups},
                          progress=False, n_boot=0)
    assert {r["column_group"] for r in ev.rows} == {g for g, members in groups.items() if members} | {"average"}


class _Broken(_Fake):
    def _score(self, batch):
        out = super()._score(batch)
        return ScoreOutput(anomaly_map=out.anomaly_map[:, :, :-1], image_score=out.image_score)


def test_malformed_maps_are_rejected_with_the_method_named(phantom):
    with pytest.raises(ValueError, match="fake: anomaly_map has shape"):
        run_localisation(_Broken("identity"), phantom.split("test"), None, ("auroc|image|map_mean",), {},
                         progress=False)


def test_a_failing_method_keeps_the_other_rows(monkeypatch, tmp_path):
    """One method raising mid-table: its failure is reported on one line, the others' rows are written and
    rendered, and the broken method is listed as having no results (never a silent number)."""
    from benchmark.registry import get_method
    from benchmark.runner import run_table

    intensity = get_method("intensity")

    def boom(self, batch):
        raise RuntimeError("simulated crash")
    monkeypatch.setattr(get_method("ae"), "_score", boom)
    monkeypatch.setattr(get_method("ae"), "fit", lambda self, train, val=None, trainer=None: {})
    res = run_table("table1", profile="smoke", store=tmp_path / "runs", out=tmp_path / "out", progress=False,
                    methods=["ae", "intensity"])
    assert len(res.failures) == 1 and "ae" in res.failures[0] and "simulated crash" in res.failures[0]
    assert set(res.rows["method"]) == {intensity.name}
    md = (tmp_path / "out" / "smoke" / "table1.md").read_text()
    assert "No results yet for: ae" in md


# ----------------------------------------------------------------------------------------------------
# rules a row must follow (audit findings): brain-only calibrated predictions, per-image Dice over lesion
# slices, strict > at an FPR threshold, constant scores said in the note, ids that name the computation
# ----------------------------------------------------------------------------------------------------
def _rows(test, val, ids):
    return {r["metric_id"]: r for r in metric_rows(MetricContext(test, val), ids, n_boot=0).rows}


def test_calibrated_brain_threshold_never_counts_background():
    """A map saturated outside the brain: the healthy-brain threshold ignores background, so must the Dice."""
    test, val = _score_set(), _healthy_val()
    outside = test.brain < 0.5
    loud = ScoreSet(test.maps.masked_fill(outside, 50.0), test.scores, test.labels, test.lesion, test.brain,
                    test.images, None, test.manifest, 0.0)
    quiet_ = _rows(test, val, ["dice|fpr@5%_healthy_brain", "precision|pooled|fpr@5%_healthy_brain"])
    loud_ = _rows(loud, val, ["dice|fpr@5%_healthy_brain", "precision|pooled|fpr@5%_healthy_brain"])
    for mid in quiet_:
        assert loud_[mid]["value"] == pytest.approx(quiet_[mid]["value"], abs=1e-12), mid
        assert "inside the brain" in loud_[mid]["note"]
    whole = _rows(loud, val, ["dice|fpr@5%_healthy_image"])["dice|fpr@5%_healthy_image"]
    assert whole["value"] < quiet_["dice|fpr@5%_healthy_brain"]["value"]  # the whole-image id does count it


def test_per_image_calibrated_dice_averages_lesion_slices_only():
    test, val = _score_set(), _healthy_val()
    r = _rows(test, val, ["dice|per_image|fpr@5%_healthy_brain"])["dice|per_image|fpr@5%_healthy_brain"]
    t = M.threshold_at_fpr(val.maps, 0.05, valid=val.brain > 0.5)
    has = test.lesion.flatten(1).amax(1) > 0
    pred = (test.maps > t) & (test.brain > 0.5)
    expect = np.mean([M.dice(pred[i], test.lesion[i]) for i in torch.nonzero(has).flatten().tolist()])
    assert r["value"] == pytest.approx(expect, abs=1e-12) and f"{int(has.sum())} slices with a lesion" in r["note"]


def test_image_acc_at_an_fpr_threshold_uses_strict_greater():
    """threshold_at_fpr bounds the share of healthy scores *above* t; the decision must be the same '>'."""
    s = torch.arange(100, dtype=torch.float64)
    t = M.threshold_at_fpr(s, 0.05)
    assert int((s > t).sum()) == 5 and int((s >= t).sum()) == 6
    y = torch.zeros(100, dtype=torch.long)
    assert M.image_acc_f1(s, y, t, strict=True)["fp"] == 5
    assert M.image_acc_f1(s, y, t)["fp"] == 6  # ProxyAno's own '≥' rule stays available
    with pytest.raises(ValueError, match="NaN"):
        M.image_acc_f1(s, y, float("nan"))


def test_constant_scores_say_so_in_the_row():
    test = _score_set()
    flat = ScoreSet(torch.zeros_like(test.maps), torch.zeros_like(test.scores), test.labels, test.lesion,
                    test.brain, test.images, None, test.manifest, 0.0)
    by = _rows(flat, None, ["auroc|image", "auroc_pixel|pooled"])
    for mid, r in by.items():
        assert r["value"] == 0.5 and "CONSTANT" in r["note"], mid
    assert all("CONSTANT" not in r["note"] for r in _rows(test, None, ["auroc|image", "auroc_pixel|pooled"]).values())


def test_afsc_score_per_image_ap_and_fixed_pixel_rules_match_references():
    from scipy.ndimage import uniform_filter
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score

    test = _score_set()
    ref = np.array([uniform_filter(m[0].double().numpy(), 21, mode="constant").max() for m in test.maps])
    np.testing.assert_allclose(M.afsc_slice_score(test.maps).numpy(), ref, rtol=1e-5, atol=1e-6)
    by = _rows(test, None, ["auroc|image|afsc_max21", "ap_pixel|per_image", "acc_pixel|pooled|paper_fixed",
                            "f1_pixel|pooled|paper_fixed"])
    assert by["auroc|image|afsc_max21"]["value"] == pytest.approx(roc_auc_score(test.labels.numpy(), ref), abs=1e-9)
    y, m = test.lesion.flatten(1).numpy() > 0.5, test.maps.flatten(1).numpy()
    aps = [average_precision_score(y[i], m[i]) for i in range(len(y)) if y[i].any()]
    assert by["ap_pixel|per_image"]["value"] == pytest.approx(np.mean(aps), abs=1e-9)
    assert by["acc_pixel|pooled|paper_fixed"]["value"] == pytest.approx(accuracy_score(y.ravel(), m.ravel() >= 0.5))
    assert by["f1_pixel|pooled|paper_fixed"]["value"] == pytest.approx(f1_score(y.ravel(), m.ravel() >= 0.5))


def test_balanced_pixel_rows_match_sklearn_on_the_drawn_pixels():
    from sklearn.metrics import accuracy_score, f1_score

    test = _score_set()
    by = _rows(test, None, ["acc_pixel_bal|pooled|paper_fixed", "f1_pixel_bal|pooled|paper_fixed"])
    ys, ps = [], []
    for i, (m, g) in enumerate(zip(test.maps.double().numpy(), test.lesion.numpy() > 0.5)):
        m, g = m.ravel(), g.ravel()
        if not g.any():
            continue
        m = (m - m.min()) / (m.max() - m.min())
        neg = np.flatnonzero(~g)
        neg = np.sort(np.random.default_rng([0, i]).choice(neg, size=min(len(neg), int(g.sum())), replace=False))
        ys += [np.ones(int(g.sum()), bool), np.zeros(len(neg), bool)]
        ps += [m[g] >= 0.5, m[neg] >= 0.5]
    y, p = np.concatenate(ys), np.concatenate(ps)
    assert y.mean() == pytest.approx(0.5)  # balanced by construction
    assert by["acc_pixel_bal|pooled|paper_fixed"]["value"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    assert by["f1_pixel_bal|pooled|paper_fixed"]["value"] == pytest.approx(f1_score(y, p), abs=1e-12)


def test_box_rows_carry_the_id_of_the_computation_that_made_them(phantom):
    test, val = phantom.split("test"), phantom.split("val", label=0)
    ids = ("f1|per_box|fpr@5%_healthy_image", "f1|per_box|fpr@5%_healthy_image|ra_code",
           "detected_boxes|paper_fixed|ra_code", "f1|per_box|paper_fixed|ra_code")
    ev = run_localisation(_Fake("oracle"), test, val, ids, {}, progress=False, n_boot=0)
    rows = pd.DataFrame(ev.rows)
    assert set(rows["metric_id"]) == set(ids)
    notes = rows[rows.column_group == ""].set_index("metric_id")["note"]
    assert "RA code" in notes["f1|per_box|fpr@5%_healthy_image|ra_code"]
    assert "RA code" not in notes["f1|per_box|fpr@5%_healthy_image"]
    assert "fixed threshold 0.009" in notes["detected_boxes|paper_fixed|ra_code"]


def test_proxyano_p75_train_normal_rule_matches_its_code():
    """t = sorted(train_scores)[int(0.75·n)], abnormal iff score ≥ t (P-Net validate_cls), sklearn ACC/F1."""
    from sklearn.metrics import accuracy_score, f1_score

    test, train = _score_set(), _score_set(seed=3, lesions=False)
    by = {r["metric_id"]: r for r in metric_rows(MetricContext(test, None, train=train),
                                                 ["acc|image|p75_train_normal", "f1|image|p75_train_normal"],
                                                 n_boot=0).rows}
    t = sorted(train.scores.tolist())[int(0.75 * len(train))]
    pred = (test.scores >= t).numpy()
    assert by["acc|image|p75_train_normal"]["value"] == pytest.approx(accuracy_score(test.labels.numpy(), pred))
    assert by["f1|image|p75_train_normal"]["value"] == pytest.approx(f1_score(test.labels.numpy(), pred))
    without = metric_rows(MetricContext(test, None), ["acc|image|p75_train_normal"], n_boot=0).rows[0]
    assert math.isnan(without["value"]) and "training normals" in without["note"]


def test_standard_protocol_scores_the_training_normals_only_when_an_id_needs_them(phantom):
    from protocols.suites import run_standard

    test, val, train = phantom.split("test"), phantom.split("val", label=0), phantom.split("train")
    ev = run_standard(_Fake("identity"), test, val, ["acc|image|p75_train_normal"], {"train": train},
                      progress=False, n_boot=0)
    assert math.isfinite(ev.rows[0]["value"]) and f"of {len(train)} training-normal scores" in ev.rows[0]["note"]
    ev = run_standard(_Fake("identity"), test, val, ["acc|image|p75_train_normal"], {}, progress=False, n_boot=0)
    assert math.isnan(ev.rows[0]["value"])


def test_ra_code_box_ids_use_ra_grid_search_and_log_precision(phantom):
    """``fpr@5%_healthy_image|ra_code`` takes RA's grid-search threshold (a multiple of 0.001, named in the
    note with the data it was searched on); the suite id keeps the exact order statistic; precision is new."""
    test, val = phantom.split("test"), phantom.split("val", label=0)
    ids = ("f1|per_box|fpr@5%_healthy_image", "f1|per_box|fpr@5%_healthy_image|ra_code",
           "precision|per_box|fpr@5%_healthy_image|ra_code")
    ev = run_localisation(_Fake("oracle"), test, val, ids, {}, progress=False, n_boot=0)
    rows = pd.DataFrame(ev.rows)
    assert set(rows["metric_id"]) == set(ids)
    notes = rows[rows.column_group == ""].set_index("metric_id")["note"]
    assert "RA code grid search" in notes["f1|per_box|fpr@5%_healthy_image|ra_code"]
    assert "healthy validation slices" in notes["f1|per_box|fpr@5%_healthy_image|ra_code"]
    assert "grid search" not in notes["f1|per_box|fpr@5%_healthy_image"]
    t = float(notes["f1|per_box|fpr@5%_healthy_image|ra_code"].split("threshold ")[1].split(":")[0])
    assert round(t * 1000) == pytest.approx(t * 1000, abs=1e-6)
    v = rows[rows.column_group == ""].set_index("metric_id")["value"]
    assert 0.0 <= v["precision|per_box|fpr@5%_healthy_image|ra_code"] <= 1.0
    assert PROTOCOLS["localisation"].version == 4


def test_validation_slices_are_scored_only_when_an_id_needs_them():
    test, val = _score_set(), _healthy_val()
    calls = []

    def lazy():
        calls.append(1)
        return val
    metric_rows(MetricContext(test, lazy), ["auroc|image", "dice|per_image|oracle_test|itermask2"], n_boot=0)
    assert calls == []  # IterMask2's ids and image AUROC read the test set only
    by = {r["metric_id"]: r for r in metric_rows(MetricContext(test, lazy), ["dice|fpr@5%_healthy_image"],
                                                 n_boot=0).rows}
    assert calls == [1] and by["dice|fpr@5%_healthy_image"]["value"] == metric_rows(
        MetricContext(test, val), ["dice|fpr@5%_healthy_image"], n_boot=0).rows[0]["value"]
