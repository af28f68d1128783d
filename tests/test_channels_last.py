"""Methods that set ``channels_last`` build their networks in that memory format through ``Method.place``, keep it
when trained weights are loaded, and score the same as the contiguous-format network up to float rounding."""

from __future__ import annotations

import pytest
import torch

from benchmark.contract import DataSpec, SliceBatch
from benchmark.profiles import configure, get_profile
from benchmark.registry import get_method

CHANNELS_LAST = ("ae", "ae-s", "ra", "afsc", "proxyano", "itermask2", "f-anogan")


def _build(name: str):
    cls = get_method(name)
    torch.manual_seed(0)
    return cls(configure(cls, get_profile("smoke")), data=DataSpec(image_size=64, channels=1))


def _conv_weights(method) -> list[torch.Tensor]:
    """3×3 (or larger) conv weights with several input channels: the ones whose two formats differ in memory."""
    return [p for net in method.networks().values() for p in net.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]


@pytest.mark.parametrize("name", CHANNELS_LAST)
def test_networks_are_channels_last_and_stay_so_after_loading(name):
    method = _build(name)
    assert type(method).channels_last
    weights = _conv_weights(method)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                           for w in weights)
    # a state saved by a contiguous-format build (older runs) loads into the channels_last networks
    state = method.state_dict()
    state["networks"] = {k: {n: t.contiguous() for n, t in sd.items()} for k, sd in state["networks"].items()}
    again = _build(name)
    again.load_state_dict(state)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(again))


def test_place_leaves_other_methods_contiguous():
    method = _build("draem")
    assert not type(method).channels_last
    assert all(w.is_contiguous() for w in _conv_weights(method))


def test_channels_last_ae_maps_match_the_contiguous_network():
    method = _build("ae")
    method.train_mode(False)
    x = torch.rand(3, 1, 64, 64)
    batch = SliceBatch(image=x, brain_mask=torch.ones_like(x))
    got = method.score(batch).anomaly_map
    for net in method.networks().values():
        net.to(memory_format=torch.contiguous_format)
    assert _conv_weights(method)[0].is_contiguous()
    want = method.score(batch).anomaly_map
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
