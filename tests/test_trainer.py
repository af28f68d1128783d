"""The shared trainer: resume after interruption gives the same weights; early stopping; NaN aborts."""

import pytest
import torch

from benchmark.trainer import Trainer
from methods.ae import AE


def small_ae(**kw):
    cfg = AE.Config(epochs=3, batch_size=4, lr=1e-3, early_stop_patience=None, **kw)
    return AE(cfg)


def params(m):
    return torch.cat([p.detach().flatten() for p in m.net.parameters()])


def test_interrupted_training_resumes_to_the_same_weights(toy_store, tmp_path, monkeypatch):
    train = toy_store.split("train").take(8)
    torch.manual_seed(0)
    ref = small_ae()
    Trainer(seed=0, progress=False).fit(ref, train)

    torch.manual_seed(0)
    first = small_ae()
    ckpt = tmp_path / "ckpt.pt"
    calls = {"n": 0}
    original = AE.training_step

    def dying_step(self, batch, step):
        calls["n"] += 1
        if step.epoch == 2:
            raise KeyboardInterrupt
        return original(self, batch, step)

    monkeypatch.setattr(AE, "training_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        Trainer(seed=0, checkpoint=ckpt, progress=False).fit(first, train)
    monkeypatch.setattr(AE, "training_step", original)
    assert ckpt.exists()

    torch.manual_seed(123)  # a fresh process: different init, everything must come from the checkpoint
    resumed = small_ae()
    report = Trainer(seed=0, checkpoint=ckpt, progress=False).fit(resumed, train)
    assert report["resumed_from_epoch"] == 2 and report["epochs_run"] == 3  # the whole history, both segments
    assert [s["epochs_run"] for s in report["segments"]] == [2, 1]
    assert torch.allclose(params(ref), params(resumed), atol=1e-6)


def test_early_stopping_restores_best_weights(toy_store):
    m = AE(AE.Config(epochs=6, batch_size=4, lr=1e-3, early_stop_patience=1))
    # a validation loss that only gets worse after epoch 0
    losses = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    m.validation_loss = lambda batch: next(losses)  # type: ignore[method-assign]
    report = Trainer(seed=0, progress=False).fit(m, toy_store.split("train").take(4), toy_store.split("val").take(1))
    assert report["best_epoch"] == 0 and report["epochs_run"] == 2


def test_non_finite_loss_aborts(toy_store, monkeypatch):
    m = small_ae()
    monkeypatch.setattr(AE, "_l1", staticmethod(lambda x, y: torch.tensor(float("nan"), requires_grad=True)))
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        Trainer(seed=0, progress=False).fit(m, toy_store.split("train").take(4))


def test_empty_training_set_is_refused_not_looped(toy_store):
    """A step budget with no batch would never end: the trainer says so in one line."""
    m = small_ae(max_steps=10)
    with pytest.raises(ValueError, match="no training batch"):
        Trainer(seed=0, progress=False).fit(m, toy_store.split("train").subset([]))
