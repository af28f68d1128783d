"""Checks every registered method must pass (in the spirit of scikit-learn's ``check_estimator``).

A new method is covered automatically once it is registered. Every method × variant, on a 128-px grey store and
on a 256-px store (ProxyAno's size): it builds from its smoke config with the variant resolved, trains a couple of
steps with the shared trainer on CPU, scores into a valid ScoreOutput, survives a state round trip, and

- the scores of a slice do not depend on the batch it is in;
- the same seed gives the same maps (build, train and score twice);
- scoring never mutates its input;
- it never sees the lesion mask unless its variant declares ``uses_lesion_mask``;
- a store of another size or channel count is refused with a clear error.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmark.contract import DataSpec, Method, MethodConfig, ScoreOutput, SliceBatch, Trainable
from benchmark.profiles import configure, get_profile
from benchmark.registry import all_methods, get_method
from benchmark.trainer import Trainer

METHODS = all_methods()
CASES = [(name, v) for name, cls in METHODS.items() for v in ("", *cls.variants)]
SIZES = (128, 256)


def smoke_method(name: str, variant: str, data: DataSpec = DataSpec(), seed: int = 0) -> Method:
    cls = METHODS[name]
    torch.manual_seed(seed)
    upstream = {k: smoke_method(u.method, u.variant, data, seed) for k, u in cls.upstreams(cls.Config()).items()}
    return cls.build(configure(cls, get_profile("smoke")), variant=variant, device="cpu", data=data,
                     upstream=upstream or None)


CONTRACT_BUDGET = dict(epochs=1, batch_size=2, max_steps=None)  # two optimiser steps are enough for the checks


def trained(name: str, variant: str, store, seed: int = 0, weights_from: Method | None = None) -> Method:
    """Build, train two steps (or take the weights of ``weights_from``: a scoring-only variant) and calibrate."""
    method = smoke_method(name, variant, DataSpec.of(store), seed)
    train, val = store.split("train").take(4), store.split("val").take(2)
    if isinstance(method, Trainable):
        method.config = method.config.replace(**CONTRACT_BUDGET)
    if weights_from is not None:
        method.load_state_dict(weights_from.state_dict())
    elif isinstance(method, Trainable):
        report = Trainer(seed=seed, progress=False, max_steps_per_epoch=2).fit(method, train, val)
        assert report["steps"] >= 1
    else:
        method.learn(train, val, trainer=None)
    method.calibrate(val)
    return method


def training_identity(name: str, variant: str) -> tuple:
    """What the trained weights depend on (as in the train key): scoring-only variants share their weights."""
    cls = METHODS[name]
    cfg = cls.resolve(configure(cls, get_profile("smoke")), variant)
    if issubclass(cls, Trainable):
        cfg = cfg.replace(**CONTRACT_BUDGET)
    return name, repr(sorted(cfg.training_dict().items()))


_TRAINED: dict[tuple[str, str, int], Method] = {}
_BY_WEIGHTS: dict[tuple, Method] = {}


@pytest.fixture
def stores(toy_store, toy_store_256):
    return {128: toy_store, 256: toy_store_256}


def get_trained(name: str, variant: str, size: int, stores) -> Method:
    """Each training identity is trained once per store size; a scoring-only variant reuses those weights
    (what the run store does through the train key)."""
    key = (name, variant, size)
    if key not in _TRAINED:
        ident = (*training_identity(name, variant), size)
        _TRAINED[key] = trained(name, variant, stores[size], weights_from=_BY_WEIGHTS.get(ident))
        _BY_WEIGHTS.setdefault(ident, _TRAINED[key])
    return _TRAINED[key]


def test_registry_has_the_reference_method():
    assert "ae" in METHODS


@pytest.mark.parametrize("name", sorted(METHODS))
def test_metadata_config_and_variants(name):
    cls = METHODS[name]
    assert cls.name == name and isinstance(cls.version, int)
    assert dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, MethodConfig)
    assert not {"image_size", "in_channels"} & {f.name for f in dataclasses.fields(cls.Config)}, \
        "size and channels come from the store (DataSpec), not the config"
    assert cls.info.paper and cls.info.summary and isinstance(cls.info.deviations, tuple)
    with pytest.raises(ValueError, match="unknown variant"):
        cls(variant="no-such-variant")
    base = configure(cls, get_profile("smoke"))
    for v, spec in cls.variants.items():
        resolved = cls.resolve(base, v)
        for k, val in spec.overrides.items():  # what runs is what is recorded
            assert getattr(resolved, k) == val
        if spec.overrides:  # an unresolved config is refused: the recorded config would not be what ran
            unresolved = base.replace(**{k: getattr(cls.Config(), k) for k in spec.overrides})
            if any(getattr(unresolved, k) != val for k, val in spec.overrides.items()):
                with pytest.raises(ValueError, match="variant sets"):
                    cls(unresolved, variant=v)
    for up in cls.upstreams(base).values():
        assert up.method in METHODS and (not up.variant or up.variant in get_method(up.method).variants)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name,variant", CASES)
def test_fit_score_and_round_trip(name, variant, size, stores):
    method = get_trained(name, variant, size, stores)
    test = stores[size].split("test")
    out = method.score(test.batch([0, 1, 2]))
    assert isinstance(out, ScoreOutput)
    assert out.anomaly_map.shape == (3, 1, size, size) and out.image_score.shape == (3,)
    assert torch.isfinite(out.anomaly_map).all() and torch.isfinite(out.image_score).all()

    state = method.state_dict()
    clone = METHODS[name].build(method.config, variant=variant, data=method.data,  # upstreams are not in the state:
                                upstream=method.upstream or None)  # each has its own model file
    clone.load_state_dict(state)
    for key, net in method.networks().items():
        for (pn, a), (_, b) in zip(net.state_dict().items(), clone.networks()[key].state_dict().items()):
            assert torch.equal(a, b), f"{name}: {key}.{pn} differs after load_state_dict"
    assert clone.calibration == method.calibration
    assert set(clone.fitted) == set(method.fitted)
    for h in method.helpers():
        assert not any(k.startswith(h) for k in state["networks"]), "frozen helpers are never saved"
    assert torch.equal(clone.score(test.batch([0, 1, 2])).anomaly_map, out.anomaly_map)


@pytest.mark.parametrize("name,variant", CASES)
def test_scores_do_not_depend_on_the_batch(name, variant, stores):
    method = get_trained(name, variant, 128, stores)
    test = stores[128].split("test")
    together = method.score(test.batch([0, 1, 2, 3]))
    for i in (0, 3):
        alone = method.score(test.batch([i]))
        # convolutions may round differently per batch size, and a map through CLAHE's histogram bins can turn
        # such a 1e-7 into a visible step at a few pixels: ≥ 99.5 % of pixels agree, the image score closely
        a, t = alone.anomaly_map[0], together.anomaly_map[i]
        close = torch.isclose(a, t, rtol=1e-4, atol=1e-5).float().mean()
        assert close >= 0.995, f"{name}/{variant}: only {float(close):.2%} of pixels agree alone vs in a batch"
        torch.testing.assert_close(alone.image_score[0], together.image_score[i], rtol=1e-3, atol=1e-5)


_FIRST: dict[tuple, tuple[str, str]] = {}
for _case in CASES:  # the first (method, variant) of each distinct training identity
    _FIRST.setdefault(training_identity(*_case), _case)
TRAINING_CASES = list(_FIRST.values())


@pytest.mark.parametrize("name,variant", TRAINING_CASES)
def test_same_seed_same_maps(name, variant, stores):
    """Build, train and score twice with one seed: identical maps (one case per distinct training)."""
    a = get_trained(name, variant, 128, stores)
    b = trained(name, variant, stores[128])
    batch = stores[128].split("test").batch([0, 1])
    torch.testing.assert_close(a.score(batch).anomaly_map, b.score(batch).anomaly_map, rtol=0, atol=0)


@pytest.mark.parametrize("name,variant", CASES)
def test_scoring_does_not_mutate_its_input(name, variant, stores):
    method = get_trained(name, variant, 128, stores)
    batch = stores[128].split("test").batch([0, 1])
    before = [None if t is None else t.clone() for t in (batch.image, batch.brain_mask, batch.lesion_mask)]
    method.score(batch)
    for was, now in zip(before, (batch.image, batch.brain_mask, batch.lesion_mask)):
        assert torch.equal(was, now)


@pytest.mark.parametrize("name,variant", CASES)
def test_lesion_mask_reaches_only_variants_that_declare_it(name, variant, stores, monkeypatch):
    method = get_trained(name, variant, 128, stores)
    seen: list[bool] = []
    inner = type(method)._score

    def spy(self, batch: SliceBatch) -> ScoreOutput:
        seen.append(batch.lesion_mask is not None or batch.label is not None)
        return inner(self, batch)

    monkeypatch.setattr(type(method), "_score", spy)
    batch = stores[128].split("test").batch([0, 1])
    with_mask = method.score(batch)
    assert seen == [method.uses_lesion_mask]
    if not method.uses_lesion_mask:  # a different mask cannot change anything it never sees
        batch.lesion_mask = 1 - batch.lesion_mask
        assert torch.equal(method.score(batch).anomaly_map, with_mask.anomaly_map)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_store_of_another_size_is_refused(name, stores):
    method = get_trained(name, "", 128, stores)
    with pytest.raises(ValueError, match="built for 128"):
        method.score(stores[256].split("test").batch([0]))
    with pytest.raises(ValueError, match="built for 128"):
        method.check_slices(stores[256].split("train"))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_score_rejects_nothing_silently(name, stores):
    """ScoreOutput.validate is applied: a NaN input must not come back as a finite-looking map."""
    method = get_trained(name, "", 128, stores)
    batch = stores[128].split("test").batch([0])
    batch.image[0, 0, 10, 10] = float("nan")
    with pytest.raises((ValueError, RuntimeError)):
        method.score(batch)
