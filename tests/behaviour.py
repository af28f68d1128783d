"""Shared by the behaviour tests (a trained method against its untrained self on the phantom): the numbers they
compare, computed the same way for every method."""

from __future__ import annotations

from benchmark.trainer import Trainer


def healthy_error_and_pixel_auroc(method, batch) -> tuple[float, float]:
    """(mean map value over the healthy slices of ``batch``, pooled pixel AUROC of the map against the lesions)."""
    from sklearn.metrics import roc_auc_score

    amap = method.score(batch).anomaly_map
    healthy, lesions = batch.label == 0, batch.lesion_mask.flatten().numpy()
    return float(amap[healthy].mean()), float(roc_auc_score(lesions, amap.flatten().numpy()))


def before_and_after_training(method, store, *, seed: int = 0, val: bool = False
                              ) -> tuple[tuple[float, float], tuple[float, float]]:
    """:func:`healthy_error_and_pixel_auroc` on the store's test split before and after training on its healthy
    training slices (and validation slices when ``val``) with the shared trainer."""
    batch = store.split("test").batch()
    before = healthy_error_and_pixel_auroc(method, batch)
    Trainer(seed=seed, progress=False).fit(method, store.split("train", label=0), store.split("val") if val else None)
    return before, healthy_error_and_pixel_auroc(method, batch)


def behaviour_phantom(**kw):
    """The smoke phantom every behaviour test trains on: generator v2's data (``TIGHT_SCAN``, v1's 98th-percentile
    scaling), on which their seconds-long trainings were sized; at 32-64 px the suite's 240 mm field of view would
    leave most lesions a pixel or two. ``kw``: ``phantom_store``'s (modality, size, cache_dir)."""
    from datasets.phantom import TIGHT_SCAN, phantom_store

    return phantom_store("smoke", scan=TIGHT_SCAN, normalise="p98", **kw)
