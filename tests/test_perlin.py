"""DRAEM's synthetic anomalies (methods/blocks/perlin.py): the Perlin noise against a pixel-by-pixel evaluation, binary
masks inside the foreground, the clean fraction, the blend, reproducibility, the ten augmenters at their identity
settings, and the texture bank (scikit-image files with no download, a user folder, one clear error for a bad one)."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch

from methods.blocks import perlin
from methods.blocks.perlin import AUGMENTERS, DraemAnomalies, augment_textures, load_textures, perlin_noise


def discs(n: int = 8, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Textured positive discs on a zero background: the foreground the masks must stay in."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.4 * size) ** 2).float()
    return (0.3 + 0.4 * torch.rand(n, 1, size, size, generator=g)) * disc


# -- Perlin noise -------------------------------------------------------------------------------------------------
def _perlin_pixel(i: int, j: int, rx: int, ry: int, angles: np.ndarray, size: int) -> float:
    """One pixel of DRAEM's rand_perlin_2d, written out: lattice coordinate i·res/size, corner ramps, quintic fade."""
    u, v = i * rx / size, j * ry / size
    iu, iv = math.floor(u), math.floor(v)
    fu, fv = u - iu, v - iv

    def ramp(di, dj):
        a = angles[iu + di, iv + dj]
        return math.cos(a) * (fu - di) + math.sin(a) * (fv - dj)

    fade = lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3  # noqa: E731
    tu, tv = fade(fu), fade(fv)
    near = ramp(0, 0) + tu * (ramp(1, 0) - ramp(0, 0))
    far = ramp(0, 1) + tu * (ramp(1, 1) - ramp(0, 1))
    return math.sqrt(2) * (near + tv * (far - near))


def test_perlin_noise_matches_a_pixel_by_pixel_evaluation():
    g = torch.Generator().manual_seed(0)
    log2 = torch.tensor([[0, 0], [2, 3], [5, 1], [3, 5]])
    angles = 2 * math.pi * torch.rand(4, 33, 33, generator=g, dtype=torch.float64)
    size = 32
    noise = perlin_noise(log2, angles.float(), size)
    assert noise.shape == (4, 1, size, size)
    rng = np.random.default_rng(0)
    for b in range(4):
        rx, ry = 2 ** int(log2[b, 0]), 2 ** int(log2[b, 1])
        for i, j in rng.integers(0, size, (12, 2)):
            ref = _perlin_pixel(int(i), int(j), rx, ry, angles[b].numpy(), size)
            assert noise[b, 0, i, j].item() == pytest.approx(ref, abs=1e-5)
        # lattice points are zeros of gradient noise
        assert noise[b, 0, :: size // rx, :: size // ry].abs().max() < 1e-6
    assert noise.abs().max() <= math.sqrt(2) * 1.0 + 1e-6


# -- masks, blend, reproducibility ---------------------------------------------------------------------------------
def test_masks_are_binary_inside_the_foreground_and_the_blend_only_touches_them():
    x = discs(64)
    aug, mask = DraemAnomalies(64, clean_prob=0.0)(x, torch.Generator().manual_seed(1))
    assert mask.shape == (64, 1, 64, 64) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert not bool((mask * (x == 0)).any()), "a mask pixel outside the foreground"
    assert torch.equal(aug * (1 - mask), x * (1 - mask)), "pixels outside the mask changed"
    inside = mask > 0
    assert inside.any() and (aug[inside] != x[inside]).float().mean() > 0.9
    assert aug.min() >= 0 and aug.max() <= 1


def test_blend_is_draem_formula_with_beta_up_to_max(tmp_path, monkeypatch):
    """x_aug = x·(1−m) + (1−β)·tex·m + β·x·m: with a constant texture c (augmenters switched off) the ratio
    (x_aug − c) / (x − c) inside the mask is one β per sample, in [0, max_beta]."""
    from skimage.io import imsave

    imsave(tmp_path / "flat.png", np.full((16, 16), 51, np.uint8), check_contrast=False)  # c = 0.2
    monkeypatch.setattr(perlin, "augment_textures", lambda tex, choice, params: tex)
    x = discs(32) + 0.3 * (discs(32) > 0)  # foreground in [0.6, 1.0], away from c
    aug, mask = DraemAnomalies(64, texture_dir=str(tmp_path), clean_prob=0.0, max_beta=0.5)(
        x, torch.Generator().manual_seed(2))
    betas = []
    for i in range(32):
        inside = mask[i] > 0
        if inside.sum() < 2:
            continue
        ratio = (aug[i][inside] - 0.2) / (x[i][inside] - 0.2)
        assert ratio.max() - ratio.min() < 1e-5  # one β per sample
        betas.append(ratio.mean().item())
    assert len(betas) > 20 and 0.0 <= min(betas) and max(betas) <= 0.5 + 1e-6 and max(betas) > 0.3


@pytest.mark.parametrize("clean_prob,lo,hi", [(0.5, 0.40, 0.70), (0.0, 0.0, 0.15), (1.0, 1.0, 1.0)])
def test_about_half_the_samples_stay_clean(clean_prob, lo, hi):
    """A clean sample returns the image itself and an empty mask. With p = 0.5 about half the samples are clean
    (plus the few whose Perlin mask is empty: ~7 % of the others at 64 px)."""
    x = discs(256)
    aug, mask = DraemAnomalies(64, clean_prob=clean_prob)(x, torch.Generator().manual_seed(0))
    empty = mask.flatten(1).sum(1) == 0
    unchanged = (aug == x).flatten(1).all(1)
    assert torch.equal(empty, unchanged)
    assert lo <= empty.float().mean().item() <= hi


def test_same_seed_same_output_and_another_seed_differs():
    x = discs(8)
    a = DraemAnomalies(64)
    out1 = a(x, torch.Generator().manual_seed(5))
    out2 = a(x, torch.Generator().manual_seed(5))
    out3 = a(x, torch.Generator().manual_seed(6))
    assert torch.equal(out1[0], out2[0]) and torch.equal(out1[1], out2[1])
    assert not torch.equal(out1[1], out3[1])
    # the global generator when none is given (seeded by the caller)
    torch.manual_seed(3)
    g1 = a(x)
    torch.manual_seed(3)
    assert torch.equal(g1[0], a(x)[0])


def test_channels_dtype_and_refused_size():
    x = discs(4).repeat(1, 3, 1, 1).double()
    aug, mask = DraemAnomalies(64)(x, torch.Generator().manual_seed(0))
    assert aug.shape == x.shape and aug.dtype == torch.float64 and mask.shape == (4, 1, 64, 64)
    with pytest.raises(ValueError, match=r"expected \[B, C, 64, 64\]"):
        DraemAnomalies(64)(discs(2, size=32))


# -- augmenters -----------------------------------------------------------------------------------------------------
def test_each_augmenter_keeps_range_and_shape_and_has_its_identity_setting():
    g = torch.Generator().manual_seed(0)
    ramp = (torch.arange(256.0) / 255.0).view(1, 1, 16, 16).repeat(3, 1, 1, 1)
    tex = torch.rand(3, 1, 16, 16, generator=g)
    for fn in AUGMENTERS:
        out = fn(tex, torch.rand(3, 2, generator=g))
        assert out.shape == tex.shape and out.min() >= 0 and out.max() <= 1, fn.__name__
    half = torch.full((3, 2), 0.5)
    name = {fn.__name__: fn for fn in AUGMENTERS}
    assert torch.allclose(name["_gamma"](tex, torch.full((3, 2), 1 / 3)), tex, atol=1e-6)  # γ = 1
    assert torch.allclose(name["_brightness"](tex, half), tex, atol=1e-6)  # ×1, +0
    assert torch.allclose(name["_sharpness"](tex, half), tex, atol=1e-6)  # factor 1
    assert torch.equal(name["_hue_saturation"](tex, half), tex)  # no colour in a grey texture
    assert torch.equal(name["_invert"](tex, half), 1 - tex)
    assert torch.allclose(name["_posterize"](ramp, torch.full((3, 2), 0.99)), ramp, atol=1e-6)  # 8 bits
    one_bit = name["_posterize"](ramp, torch.zeros(3, 2))
    assert torch.allclose(one_bit.unique(), torch.tensor([0.0, 128 / 255]))
    assert torch.equal(name["_solarize"](tex, torch.tensor([[0.9, 0.0]] * 3)), tex)  # p = 0.5 missed
    thr = 32 / 255
    sol = name["_solarize"](ramp, torch.zeros(3, 2))
    assert torch.equal(sol, torch.where(ramp >= thr, 1 - ramp, ramp))
    stretched = name["_autocontrast"](0.25 + 0.5 * ramp, torch.zeros(3, 2))  # cutoff 0: min → 0, max → 1
    assert torch.allclose(stretched, ramp, atol=1e-6)
    assert torch.allclose(name["_equalize"](ramp, half), ramp, atol=1.5 / 255)  # a flat histogram stays
    assert torch.allclose(name["_rotate45"](tex, half), tex, atol=1e-5)  # 0°


def test_augment_textures_applies_the_chosen_chain_in_order():
    tex = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    inv = [fn.__name__ for fn in AUGMENTERS].index("_invert")
    gam = [fn.__name__ for fn in AUGMENTERS].index("_gamma")
    u = torch.zeros(2, 3, 2)  # gamma 0.5
    choice = torch.tensor([[inv, gam, inv], [gam, inv, inv]])
    out = augment_textures(tex, choice, u)
    assert torch.allclose(out[0], 1 - (1 - tex[0]).sqrt(), atol=1e-6)
    assert torch.allclose(out[1], tex[1].sqrt(), atol=1e-6)


# -- texture bank ---------------------------------------------------------------------------------------------------
def test_skimage_textures_load_from_disk_without_network(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("the texture bank tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    load_textures.cache_clear()
    bank = load_textures(48)
    present = [f for f in perlin.SKIMAGE_TEXTURES if (perlin.skimage_data_dir() / f).is_file()]
    assert len(present) >= 10 and bank.shape == (len(present), 1, 48, 48) and bank.dtype == torch.uint8
    assert all(int(t.max()) - int(t.min()) > 50 for t in bank)  # real images, not blanks
    assert "brick.png" in present and "grass.png" in present


def test_textures_from_a_user_folder(tmp_path):
    from skimage.io import imsave

    (tmp_path / "banded").mkdir()
    ramp = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
    imsave(tmp_path / "banded" / "a.png", ramp, check_contrast=False)  # a DTD-style class subfolder
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 1] = 200
    imsave(tmp_path / "z.png", rgb, check_contrast=False)
    (tmp_path / "notes.txt").write_text("not an image")
    bank = load_textures(32, str(tmp_path))
    assert bank.shape == (2, 1, 32, 32)  # path order: banded/a.png, z.png
    assert int(bank[0].min()) <= 5 and int(bank[0].max()) >= 250  # the ramp, scaled to [0, 1] then to 8 bits
    green = 0.7152 * 200  # luminance of pure green 200
    assert abs(float(bank[1].float().mean()) - green) < 1.5
    aug, mask = DraemAnomalies(32, texture_dir=str(tmp_path), clean_prob=0.0)(discs(4, 32),
                                                                             torch.Generator().manual_seed(0))
    assert aug.shape == (4, 1, 32, 32)


@pytest.mark.parametrize("case", ["empty", "missing", "unreadable"])
def test_a_bad_texture_folder_is_one_clear_line(tmp_path, case):
    folder = tmp_path / "dtd"
    if case != "missing":
        folder.mkdir()
    if case == "unreadable":
        (folder / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError) as err:
        DraemAnomalies(32, texture_dir=str(folder))
    msg = str(err.value)
    assert "\n" not in msg and str(folder) in msg and msg.startswith("texture_dir")
