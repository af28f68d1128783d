"""Behaviour: a briefly trained AE localises inserted lesions clearly better than the same network untrained.

Bar: pooled pixel AUROC of |x − x̂| on the toy test slices must rise by ≥ 0.1 and exceed 0.8. An untrained
decoder outputs a near-constant sigmoid image unrelated to the input, so its residual mostly tracks the input
intensity itself (brain vs background), which does not single out lesions inside the brain.
"""

import pytest
import torch
from sklearn.metrics import roc_auc_score

from benchmark.trainer import Trainer
from methods.ae import AE


def pixel_auroc(method, test):
    batch = test.batch()
    out = method.score(batch)
    return roc_auc_score(batch.lesion_mask.flatten().numpy(), out.anomaly_map.flatten().numpy())


@pytest.mark.slow
def test_training_makes_the_ae_localise_lesions(toy_store):
    torch.manual_seed(0)
    ae = AE(AE.Config(epochs=15, batch_size=4, lr=2e-3, early_stop_patience=None))
    test = toy_store.split("test")
    before = pixel_auroc(ae, test)
    Trainer(seed=0, progress=False).fit(ae, toy_store.split("train"))
    after = pixel_auroc(ae, test)
    assert after > 0.8 and after - before >= 0.1, (before, after)
