"""DRAEM's synthetic anomalies: a thresholded Perlin-noise mask filled with an augmented texture (specs/baselines.md
§15, afsc.md §5; facts from VitjanZ/DRAEM data_loader.py / perlin.py @2dbf673). Used by ``draem`` and ``afsc``.

Per sample, as DRAEM draws it:

- mask: 2-D Perlin gradient noise with 2^a × 2^b lattice cells (a, b ~ U{0..5}), rotated by an angle ~ U(−90°, 90°)
  (bilinear, zero fill), thresholded at 0.5;
- texture: one image of the bank, 3 distinct augmenters out of DRAEM's 10 applied in a random order;
- blend: x_aug = x·(1−m) + (1−β)·tex·m + β·x·m, β ~ U(0, 0.8); with probability 0.5 the sample stays clean.

phbench changes (each also in the hosts' ``info``): the bank is the natural images bundled in the scikit-image wheel
(DTD cannot be fetched; a DTD-like folder can be given as ``texture_dir``), greyscale (single-channel MRI), and the
brain-specific rules of afsc.md §5: the mask is multiplied by the foreground (x > 0) and the base image is not
rotated. The augmenters work on greyscale [0, 1] tensors, so DRAEM's hue/saturation shift is the identity here.

Everything is batched on the images' device; every random number comes from the caller's generator (on the
generator's own device, so a CPU generator gives the same anomalies on CPU and GPU).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from methods.blocks.augment import affine_theta

# natural photographs and textures of skimage.data (synthetic drawings, silhouettes and the Shepp–Logan phantom,
# a brain-like image, are left out); missing files are skipped, so a slimmer wheel still works
SKIMAGE_TEXTURES = ("brick.png", "grass.png", "gravel.png", "camera.png", "coins.png", "moon.png", "text.png",
                    "page.png", "cell.png", "chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "retina.jpg",
                    "clock_motion.png", "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "motorcycle_left.png")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_LOG2_RES = 5  # lattice of 2^0 … 2^5 cells per axis (DRAEM: torch.randint(0, 6))
THRESHOLD = 0.5
N_AUGMENTERS = 3


# ---------------------------------------------------------------------------------------------------- Perlin
def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(log2_res: torch.Tensor, angles: torch.Tensor, size: int) -> torch.Tensor:
    """Perlin noise [B, 1, size, size] of lattice 2^log2_res[:, 0] (rows) × 2^log2_res[:, 1] (columns) cells.

    ``angles`` [B, L, L] are the gradient directions at the lattice points (only the first res + 1 per axis are
    used; L ≥ 2^max + 1). Pixel i sits at lattice coordinate i·res/size (DRAEM's grid, no half-pixel shift); the
    corners' ramps are blended with the quintic fade and scaled by √2 as in DRAEM's ``rand_perlin_2d``.
    """
    b, lat = angles.shape[0], angles.shape[-1]
    dev = angles.device
    res = (2 ** log2_res.to(dev)).to(torch.float32)
    if int(res.max()) + 1 > lat:
        raise ValueError(f"perlin_noise: {lat} lattice points per axis cannot hold {int(res.max())} cells")
    pos = torch.arange(size, device=dev, dtype=torch.float32)[None, :]
    u, v = pos * res[:, :1] / size, pos * res[:, 1:] / size  # [B, size] lattice coordinates of rows / columns
    iu, iv = u.floor().long(), v.floor().long()
    fu, fv = (u - iu)[:, :, None], (v - iv)[:, None, :]
    gx, gy = torch.cos(angles).flatten(1), torch.sin(angles).flatten(1)

    def ramp(di: int, dj: int) -> torch.Tensor:
        idx = ((iu + di)[:, :, None] * lat + (iv + dj)[:, None, :]).flatten(1)
        cx, cy = gx.gather(1, idx).view(b, size, size), gy.gather(1, idx).view(b, size, size)
        return cx * (fu - di) + cy * (fv - dj)

    tu, tv = _fade(fu), _fade(fv)
    near = torch.lerp(ramp(0, 0), ramp(1, 0), tu)
    far = torch.lerp(ramp(0, 1), ramp(1, 1), tu)
    return (math.sqrt(2.0) * torch.lerp(near, far, tv))[:, None]


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of ``x`` [B, C, H, W] about its centre by ``degrees`` [B] (bilinear, zero fill, as imgaug's
    ``Affine(rotate=…)`` defaults); the matrix is the one of methods.blocks.augment."""
    n, _, h, w = x.shape
    deg = degrees.detach().to("cpu", torch.float64)
    zero = torch.zeros_like(deg)
    theta = affine_theta({"angle": deg, "tx": zero, "ty": zero, "scale": torch.ones_like(deg),
                          "flip": torch.zeros_like(deg, dtype=torch.bool)}, h, w)
    grid = F.affine_grid(theta.to(x.device, torch.float32), [n, 1, h, w], align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------------------------------------------- textures
def _grey01(arr: np.ndarray) -> np.ndarray:
    """An image file's array as one float64 plane in [0, 1] (RGB(A) → luminance, alpha dropped; integer types by
    their range, other float ranges min–max)."""
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = rgb2gray(a[..., :3])
    elif a.ndim == 3 and a.shape[-1] in (1, 2):  # grey, grey + alpha
        a = img_as_float(a[..., 0])
    elif a.ndim == 2:
        a = img_as_float(a)
    else:
        raise ValueError(f"not a single image (array of shape {a.shape})")
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if lo < 0.0 or hi > 1.0:  # float images of another range
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a


def _resized_u8(plane: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(plane).float()[None, None]
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (t[0].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def skimage_data_dir() -> Path:
    import skimage.data

    return Path(os.path.dirname(skimage.data.__file__))


@functools.lru_cache(maxsize=4)
def load_textures(size: int, texture_dir: str | None = None) -> torch.Tensor:
    """The texture bank [N, 1, size, size] uint8 on the CPU (cached per size and folder).

    ``texture_dir`` None: the skimage.data files of ``SKIMAGE_TEXTURES`` read from disk (never a fetcher, which
    could download). A folder: every readable image below it (DTD keeps one subfolder per class), in path order.
    """
    from skimage.io import imread

    if texture_dir is None:
        root = skimage_data_dir()
        files = [root / f for f in SKIMAGE_TEXTURES if (root / f).is_file()]
        where = f"scikit-image's data folder {root}"
    else:
        root = Path(texture_dir).expanduser()
        if not root.is_dir():
            raise ValueError(f"texture_dir {root}: not a folder")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        where = f"texture_dir {root}"
    planes = []
    for f in files:
        try:
            planes.append(_resized_u8(_grey01(imread(f)), size))
        except Exception:  # an unreadable or odd file: skip it, the bank is what can be read
            continue
    if not planes:
        raise ValueError(f"{where}: no readable image ({', '.join(IMAGE_SUFFIXES)}) found")
    return torch.stack(planes)


# ---------------------------------------------------------------------------------------------------- augmenters
# DRAEM's ten imgaug augmenters on greyscale [0, 1] images, batched: each takes the selected textures [n, 1, H, W]
# and two uniforms per sample u [n, 2] that set its random parameters (imgaug's ranges in the comments).
def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v[:, None, None, None]


def _gamma(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # GammaContrast((0.5, 2.0))
    return t.clamp_min(0.0).pow(_per_sample(0.5 + 1.5 * u[:, 0]))


def _brightness(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # MultiplyAndAddToBrightness(mul 0.8–1.2, add ±30)
    return (t * _per_sample(0.8 + 0.4 * u[:, 0]) + _per_sample((60.0 * u[:, 1] - 30.0) / 255.0)).clamp(0.0, 1.0)


_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0  # PIL's ImageFilter.SMOOTH


def _sharpness(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # pillike.EnhanceSharpness(factor 0–2)
    smooth = t.clone()  # PIL keeps the one-pixel border of the degenerate image
    smooth[..., 1:-1, 1:-1] = F.conv2d(t, _SMOOTH.to(t)[None, None])
    return torch.lerp(smooth, t, _per_sample(2.0 * u[:, 0])).clamp(0.0, 1.0)


def _hue_saturation(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # AddToHueAndSaturation: no colour here
    return t


def _solarize(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # Solarize(p=0.5, threshold 32–128)
    on = _per_sample(u[:, 0] < 0.5)
    thr = _per_sample((32.0 + 96.0 * u[:, 1]) / 255.0)
    return torch.where(on & (t >= thr), 1.0 - t, t)


def _posterize(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # Posterize(nb_bits 1–8)
    bits = (1 + (8.0 * u[:, 0]).floor()).clamp(max=8)
    step = _per_sample(2.0 ** (8 - bits))
    return ((t * 255.0).round() / step).floor() * step / 255.0


def _invert(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # Invert()
    return 1.0 - t


def _autocontrast(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # pillike.Autocontrast(cutoff 0–20 %)
    flat = t.flatten(1).sort(dim=1).values
    n = flat.shape[1]
    cut = (21.0 * u[:, 0]).floor().clamp(max=20) / 100.0
    lo_i = (cut * (n - 1)).round().long()
    lo = flat.gather(1, lo_i[:, None])[:, 0]
    hi = flat.gather(1, (n - 1 - lo_i)[:, None])[:, 0]
    span = hi - lo
    out = ((t - _per_sample(lo)) / _per_sample(span.clamp_min(1e-12))).clamp(0.0, 1.0)
    return torch.where(_per_sample(span > 0), out, t)


def _equalize(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # pillike.Equalize(): PIL's ImageOps.equalize
    n = t.shape[0]
    v = (t.clamp(0.0, 1.0) * 255.0).round().long().flatten(1)
    hist = torch.zeros(n, 256, device=t.device).scatter_add_(1, v, torch.ones_like(v, dtype=torch.float32))
    last = torch.where(hist > 0, torch.arange(256, device=t.device), -1).amax(1, keepdim=True)
    step = ((hist.sum(1, keepdim=True) - hist.gather(1, last)) / 255.0).floor()
    before = hist.cumsum(1) - hist  # pixels in the lower bins
    lut = ((before + (step / 2).floor()) / step.clamp_min(1.0)).floor().clamp(max=255.0)
    out = (lut.gather(1, v) / 255.0).view_as(t)
    return torch.where(_per_sample(step[:, 0] > 0), out, t)


def _rotate45(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # Affine(rotate=(-45, 45))
    return rotate(t, 90.0 * u[:, 0] - 45.0)


AUGMENTERS: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...] = (
    _gamma, _brightness, _sharpness, _hue_saturation, _solarize, _posterize, _invert, _autocontrast, _equalize,
    _rotate45)


def augment_textures(tex: torch.Tensor, choice: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply augmenter ``choice[i, k]`` with uniforms ``params[i, k]`` (k = 0, 1, 2 in order) to texture i.

    ``choice`` and ``params`` may live on another device than ``tex`` (the generator's): the selection is computed
    there, so drawing on the CPU costs no device synchronisation per augmenter."""
    out = tex
    for k in range(choice.shape[1]):
        nxt = out.clone()
        for a, fn in enumerate(AUGMENTERS):
            idx = (choice[:, k] == a).nonzero()[:, 0]
            if len(idx):
                on = idx.to(tex.device)
                nxt[on] = fn(out[on], params[idx, k].to(tex.device))
        out = nxt
    return out


# ---------------------------------------------------------------------------------------------------- anomalies
class DraemAnomalies:
    """DRAEM's anomaly source for a training batch: ``(augmented images, mask)`` from clean images.

    ``images`` [B, C, H, W] float in [0, 1] (H = W = ``image_size``), any device; returns the augmented batch (same
    dtype and device) and the mask [B, 1, H, W] float 0/1. The same generator state gives the same output.
    """

    def __init__(self, image_size: int, *, texture_dir: str | None = None, clean_prob: float = 0.5,
                 max_beta: float = 0.8):
        if not 0.0 <= clean_prob <= 1.0:
            raise ValueError(f"DraemAnomalies: clean_prob must be in [0, 1], got {clean_prob}")
        if not 0.0 <= max_beta <= 1.0:
            raise ValueError(f"DraemAnomalies: max_beta must be in [0, 1], got {max_beta}")
        self.image_size = int(image_size)
        self.clean_prob, self.max_beta = float(clean_prob), float(max_beta)
        self.textures = load_textures(self.image_size, None if texture_dir is None else str(texture_dir))
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def _bank(self, device: torch.device) -> torch.Tensor:
        if device not in self._on_device:
            self._on_device[device] = self.textures.to(device)
        return self._on_device[device]

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dim() != 4 or images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"DraemAnomalies: expected [B, C, {self.image_size}, {self.image_size}] images, "
                             f"got {tuple(images.shape)}")
        b, dev = images.shape[0], images.device
        gdev = generator.device if generator is not None else dev
        lat = 2**MAX_LOG2_RES + 1

        def draw(*shape: int) -> torch.Tensor:  # on the generator's device; moved where the pixels need it
            return torch.rand(shape, generator=generator, device=gdev)

        log2_res = torch.randint(0, MAX_LOG2_RES + 1, (b, 2), generator=generator, device=gdev).to(dev)
        angles = 2.0 * math.pi * draw(b, lat, lat).to(dev)
        turn = 180.0 * draw(b) - 90.0
        pick = torch.randint(0, len(self.textures), (b,), generator=generator, device=gdev).to(dev)
        choice = draw(b, len(AUGMENTERS)).argsort(dim=1)[:, :N_AUGMENTERS]  # 3 distinct, in a random order
        params = draw(b, N_AUGMENTERS, 2)
        beta = self.max_beta * draw(b).to(dev)
        clean = (draw(b) < self.clean_prob).to(dev)

        noise = rotate(perlin_noise(log2_res, angles, self.image_size), turn)
        x = images.float()
        foreground = (x > 0).any(dim=1, keepdim=True)
        mask = ((noise > THRESHOLD) & foreground & ~clean[:, None, None, None]).float()
        tex = augment_textures(self._bank(dev)[pick].float() / 255.0, choice, params)
        beta = _per_sample(beta)
        blended = x * (1.0 - mask) + (1.0 - beta) * tex * mask + beta * x * mask
        return blended.to(images.dtype), mask
