"""Helpers shared by several adapters: lazy modality loading, grid checks, label validation, masks.

Kept out of ``datasets.base`` because they encode release quirks (multi-modal folders, label tables,
whole-head images), not the adapter contract.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
from scipy import ndimage

from benchmark.errors import DataError
from datasets.images import one_line, read_grey

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def require_dir(root: Path, name: str, layout: str) -> Path:
    """The root must exist and hold something; say what layout was expected otherwise."""
    root = Path(root)
    if not root.exists():
        raise DataError(root, f"{name} root folder does not exist; expected layout: {layout}")
    if not root.is_dir():
        raise DataError(root, f"{name} root is not a folder; expected layout: {layout}")
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise DataError(root, f"{name} root folder is empty; expected layout: {layout}")
    return root


def is_nifti(p: Path) -> bool:
    return p.is_file() and p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith(".")


def natural_key(s: str) -> list:
    """Sort 'x2' before 'x10' (slice numbers, case numbers)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


class LazyChannels(dict):
    """Modality → array, read on first access.

    A BraTS subject has four modalities but a recipe uses one; reading only what is asked for makes
    preparation several times faster. ``aliases`` lets a recipe say ``flair`` for a 2023 ``t2f`` file.
    """

    def __init__(self, loaders: Mapping[str, Callable[[], np.ndarray]], aliases: Mapping[str, str] | None = None):
        super().__init__({k: None for k in loaders})
        self._loaders = dict(loaders)
        self._aliases = dict(aliases or {})

    def _key(self, k):
        return self._aliases.get(k, k)

    def __contains__(self, k) -> bool:
        return dict.__contains__(self, self._key(k))

    def __getitem__(self, k):
        k = self._key(k)
        v = dict.__getitem__(self, k)
        if v is None:
            v = self._loaders[k]()
            dict.__setitem__(self, k, v)
        return v

    def get(self, k, default=None):
        return self[k] if k in self else default

    def values(self):  # type: ignore[override]
        return [self[k] for k in self.keys()]

    def items(self):  # type: ignore[override]
        return [(k, self[k]) for k in self.keys()]


def modality_channels(files: Mapping[str, Path], modalities: Iterable[str], expected: Callable[[str], Path], *,
                      native: Callable[[str], str] = str, aliases: Mapping[str, str] | None = None) -> LazyChannels:
    """One lazily read image per modality. A modality the subject lacks fails on first use with one line
    naming the file the layout expects (``expected(mod)``) and the modalities the subject does have;
    ``native`` spells a modality the dataset's way in that line (IXI "T2", MS-SEG "mprage")."""
    def have() -> str:
        names = [native(k) for k in sorted(files) if k in modalities_]
        return ", ".join(names) or "none"

    def loader(mod: str) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            if mod not in files:
                raise DataError(expected(mod), f"missing modality {native(mod)} (subject has {have()})")
            return read_image(files[mod])
        return load

    modalities_ = tuple(modalities)
    return LazyChannels({m: loader(m) for m in modalities_}, aliases=aliases)


def grey_image_volume(path: Path, *, colour: str):
    """A 2-D grey image as a one-channel Volume ("grey") whose brain mask is the whole image (jpg/png sets
    have no mask). ``colour``: what to do with an RGB file (``datasets.images.read_grey``)."""
    from datasets.base import Volume  # datasets.base imports the store, which adapters must not load at import

    img = read_grey(path, colour=colour)
    return Volume(channels=LazyChannels({"grey": lambda: img}), lesion=None, brain=np.ones(img.shape, np.float32),
                  source=str(path))


def nifti_grid(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine from the header only (cheap), as DataError when the header is unreadable."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        return shape, np.asarray(img.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises ImageFileError, EOFError, zlib.error...
        raise DataError(path, f"unreadable NIfTI header ({type(err).__name__}: {one_line(err)})") from err


def nifti_spacing(path: Path) -> tuple[float, ...]:
    """Voxel size in canonical (RAS+) axis order, from the header only (no voxel data read)."""
    import nibabel as nib

    _, aff = nifti_grid(path)
    ornt = nib.orientations.io_orientation(aff)
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    out = [0.0, 0.0, 0.0]
    for src, (dst, _) in enumerate(ornt):
        out[int(dst)] = float(zooms[src])
    return tuple(out)


def check_same_grid(files: Mapping[str, Path], atol: float = 1e-3) -> None:
    """Every file of one subject must share the first one's voxel grid (shape and affine).

    A mask saved on another grid would otherwise be reoriented separately and land on the wrong voxels.
    """
    items = [(r, Path(p)) for r, p in files.items() if str(p).endswith(NIFTI_SUFFIXES)]
    if len(items) < 2:
        return
    ref_role, ref = items[0]
    ref_shape, ref_aff = nifti_grid(ref)
    for role, p in items[1:]:
        shape, aff = nifti_grid(p)
        if shape != ref_shape:
            raise DataError(p, f"{role} shape {shape} differs from {ref_role} {ref.name} {ref_shape}")
        if not np.allclose(aff, ref_aff, atol=atol):
            raise DataError(p, f"{role} affine differs from {ref_role} {ref.name} (image and mask on different grids)")


def read_image(path: Path) -> np.ndarray:
    """3-D image in RAS+ through the project's one validated NIfTI reader."""
    from datasets.nifti import read_nifti

    return read_nifti(path)[0]


def read_labels(path: Path, known: Mapping[int, str] | Iterable[int], what: str) -> np.ndarray:
    """Integer label map in RAS+; any value outside ``known`` is an error naming the convention."""
    from datasets.nifti import read_nifti

    arr = read_nifti(path, allow_empty=True)[0]
    lab = np.rint(arr)
    if not np.allclose(lab, arr, atol=1e-3):
        raise DataError(path, f"non-integer values in a {what} label map")
    lab = lab.astype(np.int16)
    known_vals = sorted(int(k) for k in (known.keys() if isinstance(known, Mapping) else known))
    present = np.unique(lab)
    bad = [int(v) for v in present if int(v) not in known_vals and int(v) != 0]
    if bad:
        names = ", ".join(f"{k} {v}" for k, v in known.items()) if isinstance(known, Mapping) else str(known_vals)
        raise DataError(path, f"unknown label value(s) {bad} for {what} (known: {names})")
    return lab


def head_mask(vol: np.ndarray) -> np.ndarray:
    """Foreground (head) mask for images that are not skull-stripped (IXI, fastMRI, LGG, ATLAS).

    Otsu threshold on the non-zero intensities, holes filled per axial slice, largest connected
    component kept. It separates head from air; it is *not* a brain extraction.
    """
    from skimage.filters import threshold_otsu

    x = np.asarray(vol, dtype=np.float32)
    nz = x[x > 0]
    if nz.size == 0:
        return np.zeros(x.shape, bool)
    sample = nz if nz.size <= 2_000_000 else nz[:: nz.size // 2_000_000 + 1]
    thr = float(threshold_otsu(sample)) * 0.5  # half Otsu keeps dark tissue (CSF, lesions) inside
    fg = x > thr
    lab, n = ndimage.label(fg)
    if n > 1:  # component sizes by bincount: O(voxels), where sum_labels over n indices took ~1 s per IXI volume
        sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        fg = lab == (int(np.argmax(sizes)) + 1)
    if fg.ndim == 3:  # in-plane connectivity only: holes are filled slice by slice, in one call
        st = np.zeros((3, 3, 3), bool)
        st[:, :, 1] = ndimage.generate_binary_structure(2, 1)
        return fill_holes_inplane(fg, st)
    return ndimage.binary_fill_holes(fg)


def fill_holes_inplane(fg: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes(fg, structure)`` for a structure without z offsets, by labelling the
    background once: a background component that touches no x/y face of the array is a hole. Same result,
    about 3× faster on a whole-head volume (the scipy version dilates from the border until it converges)."""
    lab, n = ndimage.label(~fg, structure=structure)
    outside = np.zeros(n + 1, bool)
    outside[0] = True  # label 0 is the foreground itself
    for face in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        outside[np.unique(face)] = True
    return fg | ~outside[lab]


def to_axial_stack(images: list[np.ndarray]) -> np.ndarray:
    """Stack 2-D display images [H, W] into a volume [W, H, Z] such that
    ``datasets.recipes.axial(vol, z)`` (= ``rot90(vol[:, :, z])``) gives image z back unchanged."""
    arr = np.stack(images)  # [Z, H, W]
    return np.ascontiguousarray(np.moveaxis(np.rot90(arr, k=-1, axes=(1, 2)), 0, -1))
