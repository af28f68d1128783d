"""Checks every registered method must pass (in the spirit of scikit-learn's ``check_estimator``).

A new method is covered automatically once it is registered: it must construct from its paper config,
train a couple of steps with the shared trainer on CPU, score a batch into a valid ScoreOutput, and
survive a state_dict round trip. Each variant is exercised the same way.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmark.contract import Method, MethodConfig, ScoreOutput, Trainable
from benchmark.profiles import configure, get_profile
from benchmark.registry import all_methods
from benchmark.trainer import Trainer

METHODS = all_methods()
CASES = [(name, v) for name, cls in METHODS.items() for v in ("", *cls.info.variants)]


def smoke_method(name: str, variant: str) -> Method:
    cls = METHODS[name]
    cfg = configure(cls, get_profile("smoke"))
    torch.manual_seed(0)
    return cls(cfg, variant=variant, device="cpu")


def test_registry_has_the_reference_method():
    assert "ae" in METHODS


@pytest.mark.parametrize("name", sorted(METHODS))
def test_metadata_and_config(name):
    cls = METHODS[name]
    assert cls.name == name
    assert dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, MethodConfig)
    assert cls.info.paper and cls.info.summary
    assert isinstance(cls.info.deviations, tuple) and isinstance(cls.info.variants, tuple)
    assert len(set(cls.info.variants)) == len(cls.info.variants)
    with pytest.raises(ValueError, match="unknown variant"):
        cls(variant="no-such-variant")


@pytest.mark.parametrize("name,variant", CASES)
def test_fit_score_and_round_trip(name, variant, toy_store):
    method = smoke_method(name, variant)
    train, val, test = toy_store.split("train").take(4), toy_store.split("val").take(2), toy_store.split("test")
    if isinstance(method, Trainable):
        method.config = method.config.replace(epochs=1, batch_size=2)
        report = Trainer(seed=0, progress=False, max_steps_per_epoch=2).fit(method, train, val)
        assert report["steps"] >= 1
    method.calibrate(val)
    batch = test.batch([0, 1, 2])
    out = method.score(batch)
    assert isinstance(out, ScoreOutput)
    assert out.anomaly_map.shape == (3, 1, 128, 128) and out.image_score.shape == (3,)
    assert torch.isfinite(out.anomaly_map).all() and torch.isfinite(out.image_score).all()

    state = method.state_dict()
    clone = smoke_method(name, variant)
    clone.load_state_dict(state)
    for key, net in method.networks().items():
        for (pn, a), (_, b) in zip(net.state_dict().items(), clone.networks()[key].state_dict().items()):
            assert torch.equal(a, b), f"{name}: {key}.{pn} differs after load_state_dict"
    assert clone.calibration == method.calibration


@pytest.mark.parametrize("name", sorted(METHODS))
def test_score_rejects_nothing_silently(name, toy_store):
    """ScoreOutput.validate is applied: a NaN input must not come back as a finite-looking map."""
    method = smoke_method(name, "")
    batch = toy_store.split("test").batch([0])
    batch.image[0, 0, 10, 10] = float("nan")
    with pytest.raises((ValueError, RuntimeError)):
        method.score(batch)
