"""One validated NIfTI reader for every volume adapter.

Real releases contain truncated downloads, NaN-filled volumes and masks saved on another grid. Reading
them all through :func:`read_nifti` turns each of those into one ``DataError`` line that names the file
and the cause, instead of a nibabel/zlib traceback or, worse, silently wrong slices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from benchmark.errors import DataError

def read_nifti(path: str | Path, *, allow_empty: bool = False) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a 3-D image as float32 in RAS+ (closest canonical orientation) and its voxel spacing in mm.

    ``scl_slope``/``scl_inter`` are applied, so int16/uint8 files come back in real units. A 4-D file
    whose trailing axes are singletons (``[X, Y, Z, 1]``) is read as 3-D; a 2-D file as ``[X, Y, 1]``.
    ``allow_empty`` accepts an all-zero volume (a segmentation with no lesion is valid; an image is not).
    """
    import nibabel as nib  # imported here: reading is rare, importing nibabel on every CLI call is not

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found" if not path.exists() else "not a regular file")
    try:
        img = nib.load(str(path))
        if len(img.shape) > 3 and all(n == 1 for n in img.shape[3:]):
            img = img.slicer[(slice(None),) * 3 + (0,) * (len(img.shape) - 3)]
        if len(img.shape) == 3:
            img = nib.as_closest_canonical(img)
        data = np.asarray(img.get_fdata(dtype=np.float32))
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except DataError:
        raise
    except Exception as err:  # nibabel, gzip, zlib and numpy each raise their own types for a bad file
        cause = " ".join(str(err).split()) or type(err).__name__
        raise DataError(path, f"corrupt or truncated image file ({type(err).__name__}: {cause})") from err
    if data.ndim == 2:
        data = data[:, :, None]
        zooms = zooms + (1.0,) * (3 - len(zooms))
    if data.ndim != 3:
        raise DataError(path, f"expected a 3-D volume, got shape {tuple(data.shape)}")
    if data.size == 0:
        raise DataError(path, f"empty volume (shape {tuple(data.shape)})")
    finite = np.isfinite(data)
    if not finite.all():
        raise DataError(path, f"contains {int(data.size - finite.sum())} NaN/Inf values")
    if not allow_empty and not np.any(data):
        raise DataError(path, "all-zero volume")
    return data, zooms  # type: ignore[return-value]


def check_same_shape(arrays: Mapping[str | Path, np.ndarray]) -> tuple[int, ...]:
    """Raise a DataError naming the first file whose array shape differs from the first one's.

    Image/mask pairs on different grids would otherwise fail much later, or be resampled silently.
    """
    items = list(arrays.items())
    if not items:
        raise ValueError("check_same_shape needs at least one array")
    ref_path, ref = items[0]
    for p, arr in items[1:]:
        if arr.shape != ref.shape:
            raise DataError(p, f"shape {tuple(arr.shape)} differs from {Path(ref_path).name} {tuple(ref.shape)}")
    return tuple(ref.shape)
