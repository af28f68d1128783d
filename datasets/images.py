"""Reading 2-D image files (jpg/png/tif) the way the public releases actually store them.

Kaggle-style sets mix extensions and formats (``.jpg`` files holding PNG data, RGBA, palette, 16-bit),
so the format is sniffed from the file's first bytes, never taken from its extension, and every
problem becomes one ``DataError`` line naming the file and the cause.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif"}

# A grey picture saved as RGB JPEG keeps its channels within a few levels of each other (chroma
# subsampling); a real colour image (fundus, photo) differs by tens of levels on average.
GREY_TOLERANCE = 8.0

_MAGIC = [
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
    (b"GIF8", "GIF"),
]


def one_line(err: BaseException | str) -> str:
    """Collapse a library message onto one line (DataError messages must be one line)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def sniff_format(path: str | Path) -> str:
    """Image format from the file's magic bytes: JPEG, PNG, TIFF, BMP or GIF."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as err:
        raise DataError(path, f"cannot read file ({one_line(err)})") from err
    if not head:
        raise DataError(path, "empty file (0 bytes)")
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    raise DataError(path, f"not a supported image (first bytes {head[:8].hex()}; expected JPEG/PNG/TIFF/BMP/GIF)")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _open(path: Path):
    from PIL import Image

    fmt = sniff_format(path)
    try:
        im = Image.open(path)
        im.load()  # decode now so a truncated file fails here, with its name
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise DataError(path, f"truncated or corrupt {fmt} image ({one_line(err)})") from err
    return im, fmt


def _reject_deep(im, path: Path, fmt: str) -> None:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F") or im.mode.startswith("I;"):
        raise DataError(path, f"{fmt} with {im.mode} pixels (16/32-bit); expected an 8-bit image")


def read_grey(path: str | Path, *, colour: str = "convert") -> np.ndarray:
    """8-bit image → float32 [H, W] in [0, 255].

    ``colour="convert"``: RGB/RGBA/palette are turned into luminance (PIL ``L``: 0.299R+0.587G+0.114B),
    alpha is dropped. ``colour="reject"``: the file must be grey; an RGB file whose channels really
    differ (mean deviation > ``GREY_TOLERANCE`` levels) raises, a grey picture stored as RGB passes.
    """
    path = Path(path)
    im, fmt = _open(path)
    _reject_deep(im, path, fmt)
    if im.mode in ("L", "1"):
        return np.asarray(im.convert("L"), dtype=np.float32)
    if im.mode == "LA":
        return np.asarray(im.getchannel("L"), dtype=np.float32)
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    if colour == "reject":
        dev = float(np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).mean())
        if dev > GREY_TOLERANCE:
            raise DataError(path, f"colour {fmt} ({im.mode}, mean channel deviation {dev:.1f}) where a "
                                  "greyscale image is expected")
    elif colour != "convert":
        raise ValueError(f"colour must be 'convert' or 'reject', not {colour!r}")
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.float32)


def read_rgb(path: str | Path) -> np.ndarray:
    """8-bit image → float32 [H, W, 3] in [0, 255] (grey files are repeated over the channels)."""
    path = Path(path)
    im, fmt = _open(path)
    _reject_deep(im, path, fmt)
    return np.asarray(im.convert("RGB"), dtype=np.float32)


def read_binary_mask(path: str | Path, *, values: tuple[int, ...] | None = None) -> np.ndarray:
    """Mask file → uint8 {0, 1}.

    Palette and 1-bit masks (IDRiD) count every non-zero *index* as foreground; colour masks count any
    non-zero channel. ``values`` lists the raw grey values allowed (e.g. ``(0, 255)`` for LGG), so a
    mask holding anything else is reported instead of being silently binarised.
    """
    path = Path(path)
    im, fmt = _open(path)
    _reject_deep(im, path, fmt)
    if im.mode in ("P", "1", "L"):
        raw = np.asarray(im if im.mode != "1" else im.convert("L"))
    else:
        raw = np.asarray(im.convert("RGB")).max(axis=-1)
    if values is not None:
        bad = np.setdiff1d(np.unique(raw), np.asarray(values))
        if bad.size:
            raise DataError(path, f"unknown mask value(s) {bad[:5].tolist()}; expected only {list(values)}")
    return (raw > 0).astype(np.uint8)


def read_tif_array(path: str | Path) -> np.ndarray:
    """A TIFF as its stored array (tifffile), with truncation and format errors as one DataError line."""
    import tifffile

    path = Path(path)
    fmt = sniff_format(path)
    if fmt != "TIFF":
        raise DataError(path, f"expected a TIFF file, found {fmt} data")
    try:
        return tifffile.imread(path)
    except Exception as err:  # tifffile raises TiffFileError, ValueError, zlib errors...
        raise DataError(path, f"truncated or corrupt TIFF ({one_line(err)})") from err
