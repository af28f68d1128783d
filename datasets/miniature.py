"""Layout-faithful miniature releases: tiny synthetic files laid out exactly like a real download.

Why: the paper tables read gated datasets (fastMRI, IXI, ...) from the user's ``--root``, so CI could
never run them through the real adapters, split lists and recipes. A miniature release has the real
folder layout, file names, file formats and annotation format, and uses real file ids from the committed
split lists (the split functions select subjects by id), but its images are MNI phantom anatomy
(:mod:`datasets.phantom`) with lesions painted inside the annotated boxes. It is small (RA: ~11 MB), built
in seconds, byte-identical for a given version and seed, and cached under
``<cache>/miniature/<name>-v<MINIATURE_VERSION>`` (:func:`miniature_root`).

Releases (``RELEASES``):

``ra``  RA's data in one root (the IXI and fastMRI+ adapters both search their root recursively)::

    <root>/IXI-T1/IXI<id>-HH-<nnnn>-T1.nii.gz         8 healthy T1 volumes, int16, stored P-S-R like IXI
    <root>/multicoil_train/file_brain_AXT1_<site>_<n>.h5
                                                      reconstruction_rss float32 [slices, 320, 320], stored
                                                      up/down flipped like fastMRI; dummy kspace
    <root>/Annotations/brain.csv                      fastMRI+ rows (study-level labels and boxes)
    <root>/Annotations/brain_file_list.csv            every written file id, one per line
    <root>/miniature.json                             what was written (the summary write_ra_release returns)

Nothing here reads real data at run time: the ids, label texts and slices are written out below.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from benchmark.io import atomic_dir

MINIATURE_VERSION = 1  # bump on any change to the written bytes: it is part of the cache folder name

# ---------------------------------------------------------------------------------------------------
# RA: which real ids play which role (first ids of each list in datasets/splits/ra/, except where noted)

RA_IXI = ("IXI002", "IXI012", "IXI013", "IXI014", "IXI015", "IXI016", "IXI017", "IXI019")  # ixi_t1_png_all.csv
# fastmri_normal_splits.csv; all carry the study-level "Normal for age" row in brain.csv
RA_NORMALS = {
    "train": ("file_brain_AXT1_202_6000312", "file_brain_AXT1_202_2020381", "file_brain_AXT1_202_2020543",
              "file_brain_AXT1_202_2020319", "file_brain_AXT1_202_2020478", "file_brain_AXT1_201_6002861"),
    "val": ("file_brain_AXT1_202_2020348", "file_brain_AXT1_201_6002826", "file_brain_AXT1_202_6000317"),
    "test": ("file_brain_AXT1_202_2020062", "file_brain_AXT1_202_2020195", "file_brain_AXT1_202_2020052",
             "file_brain_AXT1_202_2020153", "file_brain_AXT1_202_2020228", "file_brain_AXT1_202_2020246"),
}
NORMAL_LABEL = "Normal for age"
# global_detection_test.csv, one of each finding: file id → study-level label as brain.csv spells it
RA_GLOBAL_PATHOLOGY = {
    "file_brain_AXT1_202_6000384": "Global label: Small vessel chronic white matter ischemic change",
    "file_brain_AXT1_201_6002802": "Colpocephaly",
    "file_brain_AXT1_202_2020044": "Extra-axial collection",
}
# the real "possible artifact" studies carry their label as boxes, not as a study-level row, and every one
# of them with a box in the list is also a localisation image: 2020264 plays both roles here too (None)
RA_GLOBAL_ARTEFACT = {
    "file_brain_AXT1_202_2020414": "Motion artifact",
    "file_brain_AXT1_202_6000438": "Motion artifact",
    "file_brain_AXT1_202_2020264": None,
}


@dataclass(frozen=True)
class MiniBox:
    """One fastMRI+ box in the labelling (flipped) 320² frame, and whether its painted lesion is bright."""

    label: str
    x: int
    y: int
    width: int
    height: int
    bright: bool = False


# localization_boxes.csv: file id → (slice, boxes). Every listed box of these files is here, in box_index
# order (the official index counts a slice's boxes sorted by label); 6000434 also holds a "Mass" box the
# list does not evaluate (index 2, as on the real slice). Labels as brain.csv spells them; positions are
# the miniature's own (inside the phantom brain, 20-60 px), slices from fastmri_plus_slices_consistent.
RA_LOCAL: dict[str, tuple[int, tuple[MiniBox, ...]]] = {
    "file_brain_AXT1_202_6000392": (1, (MiniBox("Absent septum pellucidum", 150, 118, 20, 46),)),
    "file_brain_AXT1_202_2020009": (2, (MiniBox("Craniectomy", 206, 120, 26, 56),
                                        MiniBox("Nonspecific lesion", 108, 96, 28, 30),
                                        MiniBox("Resection cavity", 160, 196, 50, 44))),
    "file_brain_AXT1_202_2020264": (2, (MiniBox("Dural thickening", 100, 62, 56, 24, bright=True),
                                        MiniBox("Possible artifact", 180, 216, 34, 34, bright=True))),
    "file_brain_AXT1_202_2020388": (2, (MiniBox("Nonspecific white matter lesion", 98, 110, 30, 36),
                                        MiniBox("Nonspecific white matter lesion", 196, 170, 32, 30))),
    "file_brain_AXT1_202_6000434": (2, (MiniBox("Enlarged ventricles", 126, 126, 26, 52),
                                        MiniBox("Enlarged ventricles", 166, 126, 26, 52),
                                        MiniBox("Mass", 110, 210, 40, 36, bright=True))),
    "file_brain_AXT1_202_6000577": (2, (MiniBox("Edema", 96, 150, 48, 56),
                                        MiniBox("Mass", 182, 90, 36, 34, bright=True))),
    "file_brain_AXT1_202_2020389": (2, (MiniBox("Posttreatment change", 190, 212, 32, 30, bright=True),)),
    "file_brain_AXT1_202_2020283": (2, (MiniBox("Mass", 170, 140, 44, 40, bright=True),)),
}
NORMAL_SLICES = 5  # slices of a volume without boxes

# ---------------------------------------------------------------------------------------------------
# image geometry and intensities

FRAME = 320  # fastMRI brain reconstruction_rss is 320 × 320
_ZOOM = 2.6  # phantom 2 mm pixel → ~0.77 mm: the head spans ~215 × 270 px of the 320² frame
_PAD = 8  # phantom voxels added around the phantom grid to hold skull and scalp
_SKULL, _SCALP = 2.5, 5.0  # outer edges of skull (dark) and scalp (bright), phantom voxels from the brain
_QUANTUM = np.float32(2.0 ** -22)  # RSS values are multiples of this (~12 bits at the peak): gzip shrinks them
_GHOST_SHIFT, _GHOST_GAIN = 106, 0.2  # motion artifact: replicas a third of the frame away along the columns
_ISMRMRD = (b'<?xml version="1.0" encoding="utf-8"?>\n<!-- phbench miniature release: synthetic data -->\n'
            b'<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding><encodedSpace><matrixSize><x>640</x>'
            b'<y>320</y><z>1</z></matrixSize></encodedSpace><reconSpace><matrixSize><x>320</x><y>320</y><z>1</z>'
            b'</matrixSize></reconSpace></encoding></ismrmrdHeader>')


def _rng(seed: int, key: str) -> np.random.Generator:
    """A stream per file: stable across processes (crc32, not ``hash``)."""
    return np.random.default_rng([seed, 0x4D494E49, zlib.crc32(key.encode())])


def _with_head(img: np.ndarray, brain: np.ndarray, ref: float, rng: np.random.Generator) -> np.ndarray:
    """A phantom axial plane [X, Y] padded by ``_PAD`` and given a dark skull and a bright scalp (whole-head
    images, like IXI and fastMRI, which are not skull-stripped)."""
    out = np.pad(img, _PAD).astype(np.float32)
    inside = ndimage.binary_fill_holes(np.pad(brain, _PAD))
    dist = ndimage.distance_transform_edt(~inside)
    noise = rng.standard_normal(out.shape).astype(np.float32)
    skull = (dist > 0) & (dist <= _SKULL)
    scalp = (dist > _SKULL) & (dist <= _SCALP)
    out[skull] = ref * np.abs(0.06 + 0.02 * noise[skull])
    out[scalp] = ref * np.abs(0.75 + 0.05 * noise[scalp])
    return out


def _reference(t1: np.ndarray, brain: np.ndarray) -> float:
    """White-matter-like level of a phantom volume (its 95th brain percentile)."""
    return float(np.percentile(t1[brain], 95))


def _paint(frame: np.ndarray, box: MiniBox, ref: float, rng: np.random.Generator) -> None:
    """A soft-edged ellipse filling ~64 % of ``box`` (display frame), 0.12× or 1.6× the reference level."""
    ys, xs = slice(box.y, box.y + box.height), slice(box.x, box.x + box.width)
    yy, xx = np.mgrid[ys, xs].astype(np.float32) + 0.5
    r = np.hypot((xx - (box.x + box.width / 2)) / (0.45 * box.width),
                 (yy - (box.y + box.height / 2)) / (0.45 * box.height))
    weight = np.clip((1.0 - r) / 0.12, 0.0, 1.0)
    level = ref * (1.6 if box.bright else 0.12)
    value = level * (1.0 + 0.04 * rng.standard_normal(weight.shape).astype(np.float32))
    frame[ys, xs] = frame[ys, xs] * (1.0 - weight) + value * weight


def _rss_volume(file_id: str, split: str, index: int, pathology: str, n_slices: int, seed: int,
                boxes: tuple[MiniBox, ...] = (), z: int | None = None, ghost: bool = False) -> np.ndarray:
    """reconstruction_rss [slices, 320, 320] as stored: display images (anterior up) flipped up/down."""
    from datasets.phantom import synth_subject

    subj = synth_subject(split, index, pathology, n_slices, seed)
    rng = _rng(seed, file_id)
    t1 = subj.channels["t1"]
    ref = _reference(t1, subj.brain)
    out = np.zeros((n_slices, FRAME, FRAME), np.float32)
    for k in range(n_slices):
        display = np.rot90(_with_head(t1[:, :, k], subj.brain[:, :, k], ref, rng))  # as recipes.axial shows RAS
        big = ndimage.zoom(np.ascontiguousarray(display), _ZOOM, order=1)
        h, w = big.shape
        if h > FRAME or w > FRAME:
            raise ValueError(f"miniature: zoomed slice {big.shape} does not fit the {FRAME}² frame")
        frame = out[k]
        top, left = (FRAME - h) // 2, (FRAME - w) // 2
        frame[top:top + h, left:left + w] = np.maximum(big, 0.0)
        if k == z:
            for b in boxes:
                _paint(frame, b, ref, rng)
        if ghost:
            frame += _GHOST_GAIN * (np.roll(frame, _GHOST_SHIFT, axis=1) + np.roll(frame, -_GHOST_SHIFT, axis=1))
    peak = rng.uniform(4e-4, 9e-4)  # real fastMRI brain RSS lives around 1e-4 … 1e-3
    out *= np.float32(peak / np.percentile(out[out > 0], 99.5))
    out = np.round(out / _QUANTUM) * _QUANTUM
    return np.ascontiguousarray(out[:, ::-1, :]).astype(np.float32)


def _write_h5(path: Path, file_id: str, rss: np.ndarray) -> None:
    """fastMRI multicoil layout: reconstruction_rss, a small dummy kspace, ismrmrd_header, the usual attrs."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    gz = dict(compression="gzip", compression_opts=4, shuffle=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("reconstruction_rss", data=rss, chunks=(1, FRAME, FRAME), **gz)
        f.create_dataset("kspace", data=np.zeros((rss.shape[0], 4, 8, 4), np.complex64), **gz)
        f.create_dataset("ismrmrd_header", data=np.bytes_(_ISMRMRD))
        f.attrs["acquisition"] = file_id.split("_")[2]
        f.attrs["max"] = float(rss.max())
        f.attrs["norm"] = float(np.linalg.norm(rss))
        f.attrs["patient_id"] = hashlib.sha256(f"miniature:{file_id}".encode()).hexdigest()


def _ixi_volume(index: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(int16 array stored P-S-R like IXI T1, its affine): a healthy phantom head, 9 axial planes of 2 mm whose
    middle one (after the reader's RAS reorientation) passes through the brain centre."""
    from datasets.phantom import synth_subject

    subj = synth_subject("train", index, "healthy", 9, seed)
    rng = _rng(seed, f"IXI/{index}")
    t1 = subj.channels["t1"]
    ref = _reference(t1, subj.brain)
    ras = np.stack([_with_head(t1[:, :, k], subj.brain[:, :, k], ref, rng) for k in range(t1.shape[2])], axis=-1)
    affine = subj.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([_PAD, _PAD, 0.0])
    ny = ras.shape[1]
    # on disk: i → posterior, j → superior, k → right (IXI's sagittal acquisition order)
    to_ras = np.array([[0, 0, 1, 0], [-1, 0, 0, ny - 1], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    disk = np.transpose(ras[:, ::-1, :], (1, 2, 0))
    return np.round(disk).astype(np.int16), affine @ to_ras


def _ixi_name(sid: str) -> str:
    """IXI file name; the scan number is made up (1000 + the subject number)."""
    return f"{sid}-HH-{1000 + int(sid[3:]):04d}-T1.nii.gz"


def _csv_text(rows: list[list[object]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


@dataclass(frozen=True)
class _FastMRIFile:
    """One h5 of the RA miniature: its phantom (split, index, pathology) and what brain.csv says about it."""

    file_id: str
    split: str
    index: int
    pathology: str  # healthy, or atrophy for the global pathologies
    study_label: str | None  # the study-level row, if any
    boxes: tuple[MiniBox, ...] = ()
    slice: int | None = None  # where the boxes are: the middle slice (n_slices = 2 * slice + 1)
    ghost: bool = False  # motion artifact

    @property
    def n_slices(self) -> int:
        return NORMAL_SLICES if self.slice is None else max(3, 2 * self.slice + 1)


def _ra_fastmri_plan() -> list[_FastMRIFile]:
    """Every fastMRI file of the RA miniature; each has its own phantom subject."""
    out = [_FastMRIFile(fid, split, 100 + k, "healthy", NORMAL_LABEL)
           for split in ("train", "val") for k, fid in enumerate(RA_NORMALS[split])]
    test = [(fid, "healthy", NORMAL_LABEL, (), None, False) for fid in RA_NORMALS["test"]]
    test += [(fid, "atrophy", label, (), None, False) for fid, label in RA_GLOBAL_PATHOLOGY.items()]
    test += [(fid, "healthy", label, (), None, True) for fid, label in RA_GLOBAL_ARTEFACT.items() if label]
    test += [(fid, "healthy", None, boxes, z, False) for fid, (z, boxes) in RA_LOCAL.items()]
    return out + [_FastMRIFile(fid, "test", k, *rest) for k, (fid, *rest) in enumerate(test)]


def write_ra_release(root: Path, *, seed: int = 0) -> dict:
    """Write RA's miniature (IXI T1 + fastMRI brain AXT1 + fastMRI+ annotations) into ``root``; return the
    summary (ids per role, slices per file, boxes) that is also written to ``root/miniature.json``."""
    from datasets.adapters._common import natural_key
    from datasets.phantom import _write_nifti

    root = Path(root)
    (root / "IXI-T1").mkdir(parents=True, exist_ok=True)
    for i, sid in enumerate(RA_IXI):
        arr, affine = _ixi_volume(i, seed)
        _write_nifti(root / "IXI-T1" / _ixi_name(sid), arr, affine)

    rows: dict[str, list[list[object]]] = {}
    n_slices: dict[str, int] = {}
    for v in _ra_fastmri_plan():
        rss = _rss_volume(v.file_id, v.split, v.index, v.pathology, v.n_slices, seed, v.boxes, v.slice, v.ghost)
        _write_h5(root / "multicoil_train" / f"{v.file_id}.h5", v.file_id, rss)
        n_slices[v.file_id] = v.n_slices
        rows[v.file_id] = ([[v.file_id, 0, "Yes", "", "", "", "", v.study_label]] if v.study_label else []) + \
            [[v.file_id, v.slice, "No", b.x, b.y, b.width, b.height, b.label] for b in v.boxes]

    ann = root / "Annotations"
    ann.mkdir(exist_ok=True)
    ids = sorted(rows, key=natural_key)
    header = [["file", "slice", "study_level", "x", "y", "width", "height", "label"]]
    (ann / "brain.csv").write_text(_csv_text(header + [r for fid in ids for r in rows[fid]]))
    (ann / "brain_file_list.csv").write_text("".join(f"{fid}\n" for fid in ids))

    summary = {
        "release": "ra", "version": MINIATURE_VERSION, "seed": seed,
        "ixi": list(RA_IXI),
        "fastmri": {"train": list(RA_NORMALS["train"]), "val": list(RA_NORMALS["val"]),
                    "test_normal": list(RA_NORMALS["test"]), "global_pathology": list(RA_GLOBAL_PATHOLOGY),
                    "global_artefact": list(RA_GLOBAL_ARTEFACT), "localisation": list(RA_LOCAL)},
        "counts": {"ixi": len(RA_IXI), "fastmri_files": len(ids), "fastmri_train": len(RA_NORMALS["train"]),
                   "fastmri_val": len(RA_NORMALS["val"]), "fastmri_test": len(ids) - len(RA_NORMALS["train"])
                   - len(RA_NORMALS["val"]), "boxes": sum(len(b) for _, b in RA_LOCAL.values())},
        "slices": n_slices,
        "boxes": {fid: {"slice": z, "boxes": [[b.label, b.x, b.y, b.width, b.height] for b in boxes]}
                  for fid, (z, boxes) in RA_LOCAL.items()},
    }
    (root / "miniature.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


RELEASES: dict[str, Callable[[Path], dict]] = {"ra": write_ra_release}


def miniature_root(name: str, cache_dir: Path | None = None) -> Path:
    """The folder of miniature release ``name``, built once into ``<cache>/miniature/<name>-v<version>``.

    ``cache_dir`` defaults to ``datasets.base.DEFAULT_CACHE`` ($PHBENCH_CACHE). The folder is built under a
    temporary name and renamed into place (``atomic_dir``), under a file lock beside it, so concurrent
    callers build it once and nobody sees a half-written release.
    """
    from filelock import FileLock

    from datasets import base

    if name not in RELEASES:
        raise KeyError(f"unknown miniature release {name!r}; known: {', '.join(sorted(RELEASES))}")
    out = (Path(cache_dir) if cache_dir is not None else base.DEFAULT_CACHE) / "miniature" / \
        f"{name}-v{MINIATURE_VERSION}"
    if out.is_dir():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{out.name}.lock")):
        if not out.is_dir():  # another process may have finished it while we waited
            with atomic_dir(out) as tmp:
                RELEASES[name](tmp)
    return out
