"""The per-paper preprocessing recipes, named and versioned (``name@vN``), plus the slice rules they need.

The core :class:`datasets.recipes.Recipe` normalises per volume over the brain, picks slices with a
split-independent rule, pads with a constant and area-resizes. The papers need more, so
:class:`PaperRecipe` extends it (without touching the core):

* slice choice that depends on the split (IterMask2: train/val = tumour-free slices in z 70–89, test =
  the one slice with the largest tumour; LGG dev benchmark: train/val tumour-free, test all);
* normalisation per slice (RA/PHANES) or with the IterMask2 intensity map; 8-bit PNG round trip;
* resampling to 1 mm (AFSC's HCP 0.7 mm); padding with the slice minimum or no padding at all;
  bilinear / nearest resizes; the mask rules each paper's loader implies (area > 0, nearest, bilinear > 0);
* 3×3 tiles (ProxyAno IDRiD); boxes taken from annotations (fastMRI+) instead of mask components;
* an auxiliary modality stored beside the image (``aux_channels``, prepared exactly like the input channels):
  the IterMask2 BraTS and ISLES recipes keep Cyclic-UNet's intermediate modality (T1 for FLAIR, else FLAIR).

Any change to what a recipe produces must bump its ``version``: the id is part of the store cache key
and of every result row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from benchmark.errors import DataError
from datasets.base import Subject, Volume
from datasets.recipes import (Recipe, SliceRule, axial, check_finite, lesion_boxes, minmax, pad_to_square,
                              percentile_normalise, resize, rule_every_brain_slice, rule_range, zscore)
from datasets.store import BoxRecord, PreparedSlice, box_label

if TYPE_CHECKING:
    from datasets.splits import SubjectsFile

# ---------------------------------------------------------------------------------------------------
# slice rules (volume, brain) → candidate z indices


def rule_all_slices() -> SliceRule:
    """Every axial slice, brain or not (AFSC's literal "all axial slices")."""
    def rule(vol: Volume, brain: np.ndarray) -> list[int]:
        return list(range(brain.shape[-1]))
    return rule


def rule_mid_index() -> SliceRule:
    """``n_slices // 2`` of the stored volume (RA/PHANES "middle axial slice", as the protocols read it)."""
    def rule(vol: Volume, brain: np.ndarray) -> list[int]:
        return [brain.shape[-1] // 2]
    return rule


def rule_index(z: int) -> SliceRule:
    """One fixed index (PHANES ATLAS: axial slice 95 of the MNI volume)."""
    return rule_range(z, z + 1)


def rule_mid_band(n: int) -> SliceRule:
    """``n`` consecutive slices centred on ``n_slices // 2`` (RA's middle slice widened to a band: a development
    setup on few volumes needs more than one training slice per volume)."""
    def rule(vol: Volume, brain: np.ndarray) -> list[int]:
        nz = brain.shape[-1]
        lo = max(0, nz // 2 - n // 2)
        return list(range(lo, min(nz, lo + n)))
    return rule


def rule_band(n: int = 20) -> SliceRule:
    """``n`` consecutive slices centred on the brain mask's z-midpoint (IterMask2 proposal for ATLAS/ISLES,
    mirroring BraTS's z 70–89)."""
    def rule(vol: Volume, brain: np.ndarray) -> list[int]:
        zs = np.flatnonzero((brain > 0).reshape(-1, brain.shape[-1]).any(axis=0))
        if zs.size == 0:
            return []
        mid = (int(zs.min()) + int(zs.max())) // 2
        lo = max(0, mid - n // 2)
        return list(range(lo, min(brain.shape[-1], lo + n)))
    return rule


# ---------------------------------------------------------------------------------------------------
# 2-D resizing with the interpolation each paper's loader used


def resize2d(x: np.ndarray, size: int, mode: str) -> np.ndarray:
    """[H, W] → [size, size]. ``bilinear`` antialiases when shrinking (as PIL/torchvision resize an image);
    ``area`` is average pooling (MONAI ``Resized`` default); ``nearest`` keeps label values."""
    if x.shape == (size, size):
        return np.asarray(x, dtype=np.float32)
    if mode == "area":
        return resize(x, size, "area")
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    if mode == "bilinear":
        shrink = x.shape[0] > size or x.shape[1] > size
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    elif mode == "nearest":
        t = F.interpolate(t, size=(size, size), mode="nearest-exact")
    else:
        raise ValueError(f"unknown resize mode {mode!r}")
    return t[0, 0].numpy()


def itermask2_intensity(v: np.ndarray, upper_per: float = 0.9, lower_per: float = 0.02) -> np.ndarray:
    """IterMask2 ``brats_preprocess.py``: with n_b non-zero of N voxels, upper = percentile(V, 100(1 − 0.1 n_b/N)),
    lower = percentile(V, 100 · 0.02 n_b/N), V' = (V − (upper − lower)/2) · 6/(upper − lower). For
    skull-stripped BraTS: background → −3, the brain's ~90th percentile → +3; no clipping."""
    nb, n = float(np.count_nonzero(v > 0)), float(v.size)
    upper = float(np.percentile(v, 100.0 * (1.0 - (1.0 - upper_per) * nb / n)))
    lower = float(np.percentile(v, 100.0 * lower_per * nb / n))
    if upper <= lower:
        raise DataError("volume", f"IterMask2 intensity map undefined (upper {upper} <= lower {lower})")
    return ((v - (upper - lower) / 2.0) * 6.0 / (upper - lower)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------


SELECT_MODES = {"all", "healthy", "max_lesion", "lesion"}
NORMS = {"p98", "p99", "p99.5", "zscore", "zscore_all", "itermask2", "u8", "minmax", "none"}


@dataclass(frozen=True)
class PaperRecipe(Recipe):
    """A :class:`Recipe` with the extra steps the papers need (see the module docstring)."""

    select: tuple[tuple[str, str], ...] = (("*", "all"),)  # split → all | healthy | max_lesion | lesion
    norm_scope: str = "volume"  # volume | slice
    norm_region: str = "brain"  # brain | nonzero: voxels the percentile / z-score statistics use
    resample_mm: float | None = None  # isotropic target spacing for 3-D volumes (None: keep)
    pad: str = "value"  # value (pad_value) | min (slice minimum) | none (direct resize: aspect changes)
    image_interp: str = "area"  # area | bilinear | nearest
    mask_rule: str = "area>=0.5"  # area>=0.5 | area>0 | nearest | bilinear>0
    # auto: the adapter's mask, else a head mask when meta says not skull-stripped, else > 0 | nonzero | head | ones
    brain_rule: str = "auto"
    quantise_u8: bool = False  # 8-bit PNG round trip after normalisation (RA/PHANES stored PNGs)
    tiles: int = 1  # t×t non-overlapping tiles per 2-D image (ProxyAno IDRiD: 3)
    boxes: str = "components"  # components (of the stored mask) | annotations (subject.meta['boxes'], fastMRI+)
    spec: str = ""  # where the choices come from

    def __post_init__(self):
        for split, mode in self.select:
            if mode not in SELECT_MODES:
                raise ValueError(f"recipe {self.id}: select mode {mode!r} for {split!r}; known {sorted(SELECT_MODES)}")
        if self.normalise not in NORMS:
            raise ValueError(f"recipe {self.id}: unknown normalisation {self.normalise!r}; known {sorted(NORMS)}")

    # -- helpers -------------------------------------------------------------------------------------

    def mode_for(self, split: str) -> str:
        table = dict(self.select)
        return table.get(split, table.get("*", "all"))

    def _normalise(self, x: np.ndarray, region: np.ndarray) -> np.ndarray:
        n = self.normalise
        if n in ("p98", "p99", "p99.5"):
            return percentile_normalise(x, float(n[1:]), region)
        if n == "zscore":
            return zscore(x, region)
        if n == "zscore_all":
            sel = x[region > 0]
            if sel.size == 0:
                sel = x.ravel()
            sd = float(sel.std())
            return ((x - float(sel.mean())) / (sd if sd > 0 else 1.0)).astype(np.float32)
        if n == "itermask2":
            return itermask2_intensity(x)
        if n == "u8":
            return x / 255.0
        if n == "minmax":
            return minmax(x)
        return x

    def _brain(self, vol: Volume, subject: Subject, first: np.ndarray) -> np.ndarray:
        from datasets.adapters._common import head_mask

        rule = self.brain_rule
        if rule == "auto":
            if vol.brain is not None:
                return np.asarray(vol.brain, dtype=np.float32)
            rule = "head" if subject.meta.get("skull_stripped") is False else "nonzero"
        if rule == "head":
            return head_mask(first).astype(np.float32)
        if rule == "ones":
            return np.ones(first.shape, np.float32)
        return (first > 0).astype(np.float32)

    def _resample(self, chans, lesion, brain, spacing):
        if not self.resample_mm or len(spacing) != 3 or chans[0].ndim != 3:
            return chans, lesion, brain
        factors = [s / self.resample_mm for s in spacing]
        if all(abs(f - 1.0) < 1e-2 for f in factors):
            return chans, lesion, brain
        chans = [ndimage.zoom(c, factors, order=1) for c in chans]
        brain = ndimage.zoom(brain, factors, order=0)
        lesion = None if lesion is None else ndimage.zoom(lesion, factors, order=0)
        return chans, lesion, brain

    def _fit(self, a: np.ndarray, pad_value: float, mode: str) -> np.ndarray:
        if self.pad != "none":
            a = pad_to_square(a, pad_value)
        return resize2d(a, self.size, mode)

    def _mask(self, m: np.ndarray) -> np.ndarray:
        m = m.astype(np.float32)
        if self.mask_rule == "area>=0.5":
            return (self._fit(m, 0.0, "area") >= 0.5).astype(np.uint8)
        if self.mask_rule == "area>0":
            return (self._fit(m, 0.0, "area") > 1e-6).astype(np.uint8)
        if self.mask_rule == "nearest":
            return (self._fit(m, 0.0, "nearest") > 0).astype(np.uint8)
        if self.mask_rule == "bilinear>0":
            return (self._fit(m, 0.0, "bilinear") > 1e-6).astype(np.uint8)
        raise ValueError(f"recipe {self.id}: unknown mask rule {self.mask_rule!r}")

    def _box_transform(self, h: int, w: int) -> Callable[[int, int, int, int], list[int]]:
        """Display-frame box (x, y, w, h) → [x0, y0, x1, y1] in stored pixels (after pad + resize)."""
        s = max(h, w) if self.pad != "none" else None
        oy, ox = ((s - h) // 2, (s - w) // 2) if s else (0, 0)
        sy, sx = (self.size / s, self.size / s) if s else (self.size / h, self.size / w)

        def tf(x: int, y: int, bw: int, bh: int) -> list[int]:
            x0, y0 = int(np.floor((x + ox) * sx)), int(np.floor((y + oy) * sy))
            x1, y1 = int(np.ceil((x + bw + ox) * sx)), int(np.ceil((y + bh + oy) * sy))
            clip = lambda v: int(min(max(v, 0), self.size))  # noqa: E731
            return [clip(x0), clip(y0), clip(x1), clip(y1)]
        return tf

    # -- main ----------------------------------------------------------------------------------------

    def slices(self, vol: Volume, subject: Subject, split: str) -> list[PreparedSlice]:
        src = vol.source or subject.id
        # auxiliary modalities (``aux_channels``) ride along as extra channels through every step below (same
        # brain region, normalisation rule on their own volume, slices, padding and resize); split off at the end
        names = (*self.channels, *self.aux_channels)
        n_in = len(self.channels)
        chans = [check_finite(np.asarray(vol.channel(c), dtype=np.float32), str(subject.files.get(c, src)))
                 for c in names]
        shape = chans[0].shape
        for c, arr in zip(names, chans):
            if arr.shape != shape:
                raise DataError(subject.files.get(c, src),
                                f"{c} shape {arr.shape} differs from {self.channels[0]} {shape}")
        lesion = None if vol.lesion is None else np.asarray(vol.lesion)
        if lesion is not None and lesion.shape != shape:
            raise DataError(subject.files.get("seg", src),
                            f"mask shape {lesion.shape} differs from image shape {shape}")
        brain = self._brain(vol, subject, chans[0])
        if brain.shape != shape:
            raise DataError(subject.files.get("brainmask", src), f"brain mask shape {brain.shape} differs from {shape}")
        chans, lesion, brain = self._resample(chans, lesion, brain, vol.spacing)
        region = brain if self.norm_region == "brain" else (chans[0] > 0).astype(np.float32)
        if self.norm_scope == "volume":
            try:
                chans = [self._normalise(a, region) for a in chans]
            except DataError as err:  # a normaliser only knows the array, not the file
                raise DataError(src, err.cause) from err

        global_findings = list(subject.meta.get("global_findings", []))
        unannotated = lesion is None and subject.pathology != "healthy"

        if chans[0].ndim == 2:
            cands = [0]
            take = lambda a, z: a  # noqa: E731
            native_les = (lambda z: bool(lesion.any())) if lesion is not None else (lambda z: False)
        else:
            cands = self.slice_rule(vol, brain)
            take = axial
            les_area = lesion.reshape(-1, lesion.shape[-1]).sum(axis=0) if lesion is not None else None
            native_les = (lambda z: bool(les_area[z] > 0)) if les_area is not None else (lambda z: False)

        mode = self.mode_for(split)
        if mode in ("max_lesion", "lesion") and lesion is None:
            raise DataError(src, f"recipe {self.id} needs a lesion mask to choose {split} slices, "
                                 "but this subject has none")
        if mode == "healthy" and unannotated:
            raise DataError(src, f"recipe {self.id} keeps only lesion-free {split} slices, but this "
                                 f"{subject.pathology} subject has no lesion mask to tell them apart")
        if mode == "healthy":
            cands = [z for z in cands if not native_les(z) and not global_findings and not unannotated]
        elif mode == "lesion":
            cands = [z for z in cands if native_les(z)]
        elif mode == "max_lesion":
            areas = [(int(np.count_nonzero(take(lesion, z))), z) for z in cands]
            best = max(areas, key=lambda t: (t[0], -t[1]), default=(0, None))
            cands = [best[1]] if best[0] > 0 else []  # no tumour in the band: subject skipped (IterMask2)

        numbers = subject.meta.get("slice_numbers")
        out: list[PreparedSlice] = []
        for z in cands:
            imgs = [take(a, z) for a in chans]
            b2 = take(brain, z)
            l2 = take(lesion, z) if lesion is not None else None
            if self.norm_scope == "slice":
                r2 = b2 if self.norm_region == "brain" else (imgs[0] > 0).astype(np.float32)
                imgs = [self._normalise(a, r2) for a in imgs]
            if self.quantise_u8:
                imgs = [np.round(np.clip(a, 0.0, 1.0) * 255.0) / 255.0 for a in imgs]
            h, w = imgs[0].shape
            for t, (ys, xs) in enumerate(_tiles(h, w, self.tiles)):
                ti = [a[ys, xs] for a in imgs]
                pad_v = [float(a.min()) if self.pad == "min" else self.pad_value for a in ti]
                img = np.stack([self._fit(a, pv, self.image_interp) for a, pv in zip(ti, pad_v)])
                bs = np.clip(self._fit(b2[ys, xs].astype(np.float32), 0.0, "area"), 0.0, 1.0)
                les = self._mask(l2[ys, xs]) if l2 is not None else None
                n_les = int(les.sum()) if les is not None else 0
                labels: list[str] = []
                boxes: list[list[int]] = []
                if self.boxes == "annotations":
                    tf = self._box_transform(h, w)
                    on_slice = subject.meta.get("boxes", {}).get(int(z), [])
                    # a box's index is its place among the slice's boxes sorted by label: how RA's box list names
                    # them (all 97 of its files agree with the fastMRI+ annotations this way, none per label)
                    rank = {i: k for k, i in enumerate(sorted(range(len(on_slice)),
                                                             key=lambda i: box_label(on_slice[i][0])))}
                    for i, (label, x, y, bw, bh) in enumerate(on_slice):
                        boxes.append(BoxRecord(tf(x, y, bw, bh), box_label(label), rank[i], [x, y, bw, bh],
                                               [h, w]).to_json())
                        labels.append(label.lower())
                elif les is not None and n_les:
                    boxes = lesion_boxes(les)
                # an annotated study is abnormal on every slice (RA's global sets are studies, whatever slice is kept)
                study_boxes = self.boxes == "annotations" and bool(subject.meta.get("boxes"))
                anomalous = (n_les >= self.min_lesion_pixels or bool(global_findings) or unannotated or bool(labels)
                             or study_boxes)
                if not anomalous:
                    pathology = "healthy"
                elif global_findings or labels:
                    pathology = "|".join(global_findings + sorted(set(labels)))
                elif study_boxes:
                    pathology = "|".join(subject.meta.get("local_findings") or ["local"]) + " (other slices)"
                else:
                    pathology = subject.pathology
                number = int(numbers[z]) if numbers is not None and chans[0].ndim == 3 else int(z)
                out.append(PreparedSlice(
                    image=img[:n_in].astype(np.float32), brain=bs.astype(np.float32), lesion=les, subject=subject.id,
                    slice=t if self.tiles > 1 else number, split=split, label=int(anomalous), pathology=pathology,
                    boxes=boxes, source=str(vol.source),
                    aux=img[n_in:].astype(np.float32) if self.aux_channels else None))
        return out


def _tiles(h: int, w: int, t: int) -> list[tuple[slice, slice]]:
    """Non-overlapping t×t grid of floor-sized tiles (the last row/column drops the remainder)."""
    if t <= 1:
        return [(slice(0, h), slice(0, w))]
    th, tw = h // t, w // t
    return [(slice(i * th, (i + 1) * th), slice(j * tw, (j + 1) * tw)) for i in range(t) for j in range(t)]


# ---------------------------------------------------------------------------------------------------
# the named recipes

RECIPES: dict[str, Recipe] = {}


def _add(r: Recipe) -> Recipe:
    if r.name in RECIPES:
        raise KeyError(f"recipe {r.name!r} defined twice")
    RECIPES[r.name] = r
    return r


_AFSC = dict(normalise="p99.5", resample_mm=1.0, pad="value", image_interp="bilinear", mask_rule="nearest",
             brain_rule="nonzero", size=128,
             spec="protocols/afsc.md §3: per-volume 99.5th pct of brain voxels, clip; HCP 0.7→1 mm; pad square; "
                  "bilinear image / nearest mask; 128 px")
AFSC_T2 = _add(PaperRecipe("afsc_t2", 1, ("t2",), rule_all_slices(), **_AFSC))
AFSC_T2_BRAIN = _add(PaperRecipe("afsc_t2_brain", 1, ("t2",), rule_every_brain_slice(1e-9), **_AFSC))

_ITERMASK2_BRATS = dict(
    select=(("train", "healthy"), ("val", "healthy"), ("test", "max_lesion"), ("*", "all")),
    normalise="itermask2", norm_scope="volume", pad="min", image_interp="area", mask_rule="area>0",
    brain_rule="nonzero", size=128,
    spec="protocols/itermask2.md §2: z 70–89; train/val tumour-free slices, test = largest-tumour slice; "
         "V' = 6V/upper − 3; area resize to 128, GT = area-resized seg > 0, soft brain mask")


def cyclic_intermediate(modality: str) -> tuple[str, ...]:
    """Cyclic-UNet's intermediate modality for an input (IterMask2 §3, baselines.md §21): T1 for FLAIR, FLAIR
    for any other; stored beside the image as the recipe's ``aux_channels``."""
    return ("t1",) if modality == "flair" else ("flair",)


# aux: Cyclic-UNet's intermediate modality, prepared like the input (other methods ignore it)
ITERMASK2_BRATS = {m: _add(PaperRecipe(f"itermask2_brats_{m}", 1, (m,), rule_range(70, 90),
                                       aux_channels=cyclic_intermediate(m), **_ITERMASK2_BRATS))
                   for m in ("flair", "t1", "t1ce", "t2")}

_ITERMASK2_PROPOSED = dict(
    select=(("train", "healthy"), ("val", "healthy"), ("test", "max_lesion"), ("*", "all")),
    normalise="zscore_all", norm_scope="volume", pad="min", image_interp="area", mask_rule="area>0",
    brain_rule="auto", size=128,
    spec="protocols/itermask2.md §3 (proposal): 20-slice band at the brain z-midpoint; z-score over brain voxels "
         "applied to the whole volume; pad with background to square; area resize to 128")
ITERMASK2_ATLAS = _add(PaperRecipe("itermask2_atlas_t1", 1, ("t1",), rule_band(20), **_ITERMASK2_PROPOSED))
ITERMASK2_ISLES = _add(PaperRecipe("itermask2_isles_flair", 1, ("flair",), rule_band(20),
                                   aux_channels=cyclic_intermediate("flair"), **_ITERMASK2_PROPOSED))

_RA = dict(normalise="p98", norm_scope="slice", norm_region="nonzero", quantise_u8=True, pad="min",
           image_interp="bilinear", mask_rule="bilinear>0", brain_rule="auto", size=128)
RA_MID_T1 = _add(PaperRecipe(
    "ra_mid_t1", 2, ("t1",), rule_mid_index(), boxes="annotations", **_RA,
    spec="protocols/ra.md §2 + README resolution 12: middle axial slice n//2; 98th pct of pixels > 0, clip, 8-bit; "
         "pad with the minimum, bilinear to 128; fastMRI+ boxes in the flipped frame; brain = head mask"))
RA_IXI_BAND = _add(PaperRecipe(
    "ra_ixi_band_t1", 1, ("t1",), rule_mid_band(11), resample_mm=2.0, **_RA,
    spec="suite IXI development setup on ra_mid_t1's preprocessing: 11 axial slices (±10 mm) around n//2 of the "
         "volume resampled to 2 mm (the shared IXI files are 2 mm but one), 98th pct of pixels > 0, clip, 8-bit, "
         "pad with the minimum, bilinear to 128"))
PHANES_ATLAS = _add(PaperRecipe(
    "phanes_atlas_sl95", 1, ("t1",), rule_index(95), **_RA,
    spec="protocols/phanes.md §3: ATLAS axial slice 95; 98th pct of pixels > 0, clip, 8-bit; pad with the minimum, "
         "bilinear to 128; mask resized the same way then > 0"))

_PROXY = dict(normalise="u8", norm_scope="slice", pad="none", image_interp="bilinear", mask_rule="nearest",
              brain_rule="ones", size=256)
PROXYANO_GREY = _add(PaperRecipe(
    "proxyano_grey256", 1, ("grey",), rule_mid_index(), **_PROXY,
    spec="protocols/proxyano.md §1.1/1.2: grey, direct resize to 256 (no padding), /255"))
PROXYANO_IDRID = _add(PaperRecipe(
    "proxyano_idrid_tiles256", 1, ("grey",), rule_mid_index(), tiles=3, **_PROXY,
    spec="protocols/proxyano.md §1.3: 3×3 floor tiles per image, grey, 256 px, masks nearest then > 0"))

LGG_FLAIR = _add(PaperRecipe(
    "lgg_flair", 2, ("flair",), rule_all_slices(),
    select=(("train", "healthy"), ("val", "healthy"), ("test", "all"), ("*", "all")),
    normalise="p98", norm_scope="volume", pad="value", image_interp="area", mask_rule="area>=0.5",
    brain_rule="head", size=128, aux_channels=("pre",),
    spec="suite dev benchmark: FLAIR (tif channel 1); per-patient 98th pct of head pixels, clip; train/val "
         "tumour-free slices, test every slice; area resize; v2: the pre-contrast T1 (tif channel 0) stored "
         "beside it as Cyclic-UNet's intermediate modality (its FLAIR → T1 → FLAIR cycle)"))


def get_recipe(name: str) -> Recipe:
    """By name (``ra_mid_t1``) or id (``ra_mid_t1@v2``; the version must match)."""
    base, _, ver = name.partition("@v")
    if base not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    r = RECIPES[base]
    if ver and int(ver) != r.version:
        raise KeyError(f"recipe {base!r} is at v{r.version}, not v{ver}")
    return r


def with_size(recipe: Recipe, size: int) -> Recipe:
    """The same recipe at another size, under its own name (the id is the store's cache key)."""
    if size == recipe.size:
        return recipe
    return dataclasses.replace(recipe, name=f"{recipe.name}_s{size}", size=size)


# ---------------------------------------------------------------------------------------------------
# setups: dataset × recipe × split, the unit a protocol prepares


@dataclass(frozen=True)
class Setup:
    """One prepared store of a paper: which adapter (and options), which recipe, which subject split."""

    id: str
    dataset: str
    recipe: str
    split: Callable[[], Callable]  # factory → split_fn(subjects) -> {id: split}
    adapter_kwargs: tuple[tuple[str, object], ...] = ()
    note: str = ""
    # more releases read under the same root with the same recipe: (dataset, adapter kwargs) each (RA: IXI)
    also: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
    # the split's lists must all be under the root (their name for the message), unless prepare(subset=True)
    complete_lists: str = ""

    def adapter(self, root):
        from benchmark.registry import get_dataset
        from datasets.base import UnionAdapter

        first = get_dataset(self.dataset)(root, **dict(self.adapter_kwargs))
        if not self.also:
            return first
        return UnionAdapter([first, *(get_dataset(d)(root, **dict(kw)) for d, kw in self.also)])

    def prepare(self, root, *, cache_dir=None, skip_bad: bool = False, force: bool = False, size: int | None = None,
                subset: bool | SubjectsFile = False):
        """The prepared store; ``subset``: True uses a root that holds only part of ``complete_lists`` as it is; a
        :class:`~datasets.splits.SubjectsFile` (``--subjects FILE``) replaces the setup's split by the user's."""
        from datasets.base import prepare
        from datasets.splits import SubjectsFile, require_listed

        adapter = self.adapter(root)
        rec = get_recipe(self.recipe)
        rec = with_size(rec, size) if size else rec
        if isinstance(subset, SubjectsFile):
            split = subset.split_fn(root)
        else:
            split = self.split()
            if self.complete_lists:
                split = require_listed(split, self.complete_lists, root, subset=subset)
        return prepare(adapter, rec, cache_dir=cache_dir, skip_bad=skip_bad, split_fn=split, force=force)


# RA's fastMRI+ images: AXT1 only; an annotated volume missing from the root is reported, not silently dropped
_RA_FASTMRI = (("series", ("AXT1",)), ("report_missing", True))


@dataclass(frozen=True)
class MergedSetup:
    """Splits of several setups in one store, each prepared by its own recipe from the same root (PHANES
    Table 2: train/val of ``ra-ixi-fastmri``, test of ``phanes-atlas2``). Cached by the parts' fingerprints."""

    id: str
    parts: tuple[tuple[str, tuple[str, ...]], ...]  # (setup id, splits taken from it)
    note: str = ""

    def prepare(self, root, *, cache_dir=None, skip_bad: bool = False, force: bool = False, size: int | None = None,
                subset: bool | SubjectsFile = False):
        """As :meth:`Setup.prepare`; a ``SubjectsFile`` gives each part only the rows of the splits it takes."""
        import hashlib
        from pathlib import Path

        from datasets.base import DEFAULT_CACHE
        from datasets.splits import subjects_for
        from datasets.store import SliceStore, merge_stores

        stores = [(SETUPS[sid].prepare(root, cache_dir=cache_dir, skip_bad=skip_bad, force=force, size=size,
                                       subset=subjects_for(subset, *sp)), sp)
                  for sid, sp in self.parts]
        key = hashlib.sha256("|".join(f"{st.fingerprint}:{','.join(sp)}" for st, sp in stores).encode()).hexdigest()
        path = Path(cache_dir or DEFAULT_CACHE / "stores") / f"merged-{self.id}-{key[:12]}"
        if not force and (path / "meta.json").exists():
            return SliceStore(path)
        return merge_stores(path, stores, {"dataset": self.id, "root": str(root)})


def _setups() -> dict[str, Setup]:
    from datasets import splits as sp

    out = [
        Setup("afsc-hcp", "hcp", "afsc_t2", lambda: sp.holdout(0.05, 0), note="train + seeded 5 % val (calibration)"),
        Setup("afsc-brats2017", "brats2017", "afsc_t2", lambda: sp.all_as("test")),
        Setup("afsc-msseg2015", "msseg2015", "afsc_t2", lambda: sp.all_as("test"), note="rater 1"),
        *[Setup(f"itermask2-brats2021-{m}", "brats2021", f"itermask2_brats_{m}", sp.itermask2_brats2021,
                complete_lists="IterMask2's official BraTS2021 lists (990 / 128 / 133)")
          for m in ("flair", "t1", "t1ce", "t2")],
        Setup("itermask2-atlas2", "atlas2", "itermask2_atlas_t1", sp.itermask2_atlas2, note="suite split 518/67/70",
              complete_lists="the suite's ATLAS v2.0 split (518 / 67 / 70)"),
        *[Setup(f"itermask2-isles2015-fold{k}", "isles2015", "itermask2_isles_flair",
                (lambda k=k: sp.itermask2_isles2015(k)), note="suite 4-fold CV") for k in range(4)],
        Setup("ra-fastmri", "fastmri_plus", "ra_mid_t1", lambda: sp.ra_fastmri("bkp"),
              adapter_kwargs=_RA_FASTMRI, note="131/15/30 normals + global/local test images"),
        Setup("ra-fastmri-711", "fastmri_plus", "ra_mid_t1", lambda: sp.ra_fastmri("official"),
              adapter_kwargs=_RA_FASTMRI, note="the config's 130 training normals"),
        Setup("ra-ixi", "ixi", "ra_mid_t1", sp.ra_ixi, note="581 IXI T1 training subjects"),
        Setup("ra-ixi-fastmri", "fastmri_plus", "ra_mid_t1", lambda: sp.union(sp.ra_fastmri("bkp"), sp.ra_ixi()),
              adapter_kwargs=_RA_FASTMRI, also=(("ixi", ()),),
              note="RA's tables: train 581 IXI + 131 fastMRI+ normals (712), val 15, test 30 normals + 50 global "
                   "+ 92 box images"),
        Setup("ra-ixi-dev", "ixi", "ra_ixi_band_t1", sp.ra_ixi_dev,
              note="development: 36 shared IXI T1 volumes, subject-level 24/4/8, 11 central slices each"),
        Setup("phanes-atlas2", "atlas2", "phanes_atlas_sl95", sp.phanes_atlas, note="655 test slices (z = 95)"),
        Setup("proxyano-brain", "brain_mri_tumor", "proxyano_grey256", lambda: sp.proxyano_brain("bt_default")),
        Setup("proxyano-oct2017", "oct2017", "proxyano_grey256", sp.proxyano_oct),
        Setup("proxyano-idrid", "idrid", "proxyano_idrid_tiles256", lambda: sp.proxyano_idrid("all81")),
        Setup("lgg-dev", "lgg", "lgg_flair", sp.lgg),
    ]
    return {s.id: s for s in out}


SETUPS: dict[str, "Setup | MergedSetup"] = _setups()
SETUPS["phanes-ixi-fastmri-atlas2"] = MergedSetup(
    "phanes-ixi-fastmri-atlas2", (("ra-ixi-fastmri", ("train", "val")), ("phanes-atlas2", ("test",))),
    note="PHANES Table 2: trained on RA's 712 healthy slices (val 15), tested on ATLAS v2.0 slice 95")
