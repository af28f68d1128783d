"""Layout-faithful miniature releases: tiny synthetic files laid out exactly like a real download.

Why: the paper tables read gated datasets (fastMRI, IXI, ...) from the user's ``--root``, so CI could
never run them through the real adapters, split lists and recipes. A miniature release has the real
folder layout, file names, file formats and annotation format, and uses real file ids from the committed
split lists (the split functions select subjects by id), but its images are MNI phantom anatomy
(:mod:`datasets.phantom`) with lesions painted inside the annotated boxes. It is small (RA: ~11 MB; PHANES:
~16 MB), built in seconds, byte-identical for a given version and seed, and cached under
``<cache>/miniature/<name>-v<version>`` (:func:`miniature_root`, :func:`release_version`).

Releases (``RELEASES``; every one holds a few subjects of each list, so the tables read it with ``subset``):

``ra``  RA's data in one root (the IXI and fastMRI+ adapters both search their root recursively)::

    <root>/IXI-T1/IXI<id>-HH-<nnnn>-T1.nii.gz         8 healthy T1 volumes, int16, stored P-S-R like IXI
    <root>/multicoil_train/file_brain_AXT1_<site>_<n>.h5
                                                      reconstruction_rss float32 [slices, 320, 320], stored
                                                      up/down flipped like fastMRI; dummy kspace
    <root>/Annotations/brain.csv                      fastMRI+ rows (study-level labels and boxes)
    <root>/Annotations/brain_file_list.csv            every written file id, one per line
    <root>/miniature.json                             what was written (the summary write_ra_release returns)

``phanes``  PHANES's data in one root: RA's release (the same files, :func:`write_ra_release`: PHANES trains on
RA's healthy IXI + fastMRI+ data, Table 1 draws sprites on the fastMRI+ normal test slices) plus ATLAS R2.0 for
Table 2, laid out like the release (the paths of ``datasets/splits/phanes/atlas_train.csv``)::

    <root>/ATLAS_2/Training/R<site>/sub-r<site>s<n>/ses-1/anat/
        sub-r<site>s<n>_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
                                                      6 stroke T1w volumes, uint8, RAS, 1 mm, not skull-stripped
        sub-r<site>s<n>_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz
                                                      uint8 {0, 1} lesion mask on the same grid
    <root>/miniature.json                             RA's summary + an "atlas" part (write_phanes_release)

The ATLAS volumes keep the real MNI152NLin2009aSym z axis (189 slices from z = -72 mm, so the recipe's slice
95 is z = +23 mm, through the lateral ventricles' bodies) but a 108 × 128 in-plane crop of a ~0.6× phantom
head: 128 px is the store size, so slice 95 is padded but not resized and a mask's pixel count on slice 95
is its count in the store (a real 197 × 233 slice is shrunk, which turns one lesion pixel into four). Each
volume holds one hypo-intense stroke lesion (``PHANES_ATLAS``); one of them shows a single lesion pixel on
slice 95 and one none (the official evaluation scores only slices with more than one).

``itermask2``  IterMask2's three tables in one root::

    <root>/BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz
                                                      9 cases of the official lists (4 train, 2 val, 3 test),
                                                      int16, 155 axial slices; test tumours cross z 70–89
    <root>/SISS2015_Training/<n>/VSD.Brain.XX.O.MR_{Flair,T1,T2,DWI}.<id>/….nii and …OT.<id>/….nii
                                                      all 28 ISLES 2015 SISS cases (the 4-fold CV tests each once)
    <root>/ATLAS_2/Training/R001/sub-r001s…/ses-1/anat/…   9 ATLAS v2.0 subjects of the suite split

``afsc``  AFSC's three datasets in one root, one folder each (the HCP adapter finds ``*/MNINonLinear`` one or two
levels under the root, the BraTS and MS-SEG adapters match their own file names anywhere under it, so each setup
reads only its own files; every table runs with this folder as its root)::

    <root>/HCP/<id>/MNINonLinear/T{1,2}w_restore_brain.nii.gz
                                                      6 healthy subjects (S500 ids), uint8, the real 260 × 311 × 260
                                                      0.7 mm MNI grid stored L-A-S (afsc_t2 resamples it to 1 mm)
    <root>/MICCAI_BraTS17_Data_Training/{HGG,LGG}/Brats17_<inst>_<n>_1/Brats17_…_{flair,t1,t1ce,t2,seg}.nii.gz
                                                      3 HGG (labels 1, 2, 4) + 2 LGG (1, 2), uint8, 240 × 240 × 155
    <root>/ISBI2015/training/trainingNN/preprocessed/trainingNN_TT_{flair,mprage,pd,t2}_pp.nii
    <root>/ISBI2015/training/trainingNN/masks/trainingNN_TT_mask{1,2}.nii
                                                      2 patients × 2 time points, uncompressed uint8, the real
                                                      181 × 217 in-plane grid but 12 of the 181 axial slices

The brains keep their real size in mm (the phantom's 2 mm voxels are blocks of 0.7 / 1 mm voxels in plane, linear
along z; the uncompressed ISBI files are linear in every axis), so the three datasets fill their 128 px slices
alike. Where the files differ from the real ones, to stay small (~35 MB): 8-bit voxels (the real HCP and ISBI files
are float32, BraTS int16) and the ISBI slab (z = +2 … +13 mm, through the lateral ventricles' bodies: 12 slices,
some with periventricular lesions and some without; the full 181 would be 24 × 7 MB uncompressed). Both time points
of a patient share one anatomy and lesion load (own gain and bias field); rater 2 redraws rater 1's lesion borders.

``proxyano``  ProxyAno's three datasets in one root, one folder each; all three setups (``proxyano-brain``,
``proxyano-oct2017``, ``proxyano-idrid``) prepare from the root itself (:func:`proxyano_roots`: the merged brain
adapter finds both Kaggle sets one level under it, the OCT2017 adapter its ``OCT2017/`` folder, the IDRiD adapter
its folder one level down; none of them reads another's files)::

    <root>/brain-mri-images-for-brain-tumor-detection/{yes,no}/…   navoneel's set: 8 tumour, 7 normal images under
                                                      real names, each with its real format and mode (JPEG RGB / L,
                                                      PNG data in .jpg files as RGBA or palette, .png)
    <root>/brain-tumor-classification-mri/{Training,Testing}/{glioma,meningioma,pituitary,no}_tumor/…
                                                      Bhuvaji's set: RGB JPEG; 7 + 7 normals, 2 + 2 per tumour class
    <root>/OCT2017/{train,test,val}/{NORMAL,CNV,DME,DRUSEN}/<CLASS>-<patient>-<n>.jpeg
                                                      the Kaggle mirror: grey JPEG B-scans, 496 px high, 512 or 768
                                                      wide; train 14 NORMAL + 1 per disease, test 2 and val 1 per class
    <root>/idrid/A. Segmentation/{1. Original Images,2. All Segmentation Groundtruths}/{a. Training,b. Testing} Set/…
                                                      5 fundus images (3 + 2) with 1-bit palette TIFF masks (MA, HE, EX,
                                                      SE, OD; SE or HE missing for some, as in IDRiD)
    <root>/idrid/B. Disease Grading/{1. Original Images/{a. Training Set,b. Testing Set},2. Groundtruths}/…
                                                      8 grade-0 and 2 graded training images, 2 test images, the two
                                                      grading CSVs (CRLF; the training one with its 9 empty columns)

The brain images are elliptic MRI phantoms (scalp/skull ring, folded grey/white matter, ventricles; T1-, T2- or
FLAIR-like), 96-300 px, tumours painted as bright or ring-enhancing blobs; every pair is ≥ 12 pHash bits apart (the
split merges ≤ 4) except one planted near-duplicate (a rescaled, re-encoded copy of ``no/N1.JPG`` among the Testing
normals) that the ``bt_default`` split's de-duplication drops: 20 distinct normals → 13 train, 7 test + 7 tumour
images. The OCT scans are layered retina bands with a foveal pit (CNV: raised RPE and fluid, DME: cysts in a
thickened retina, DRUSEN: RPE domes); the fundus images are 536 × 356 (1/8 of the real 4288 × 2848 frame), their
masks written as IDRiD ships them (the writer reproduces the real masks byte for byte). ~2 MB in all.

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
from typing import TYPE_CHECKING, Callable

import numpy as np
from scipy import ndimage

from benchmark.io import atomic_dir

if TYPE_CHECKING:
    from datasets.phantom import PhantomSubject

MINIATURE_VERSION = 1  # bump on any change to RA's written bytes: it is part of the cache folder name
ATLAS_VERSION = 1  # bump on any change to the ATLAS files the phanes release adds to RA's

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
    from datasets.phantom import TIGHT_SCAN, synth_subject

    subj = synth_subject(split, index, pathology, n_slices, seed, TIGHT_SCAN)
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
    from datasets.phantom import TIGHT_SCAN, synth_subject

    subj = synth_subject("train", index, "healthy", 9, seed, TIGHT_SCAN)
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


# ---------------------------------------------------------------------------------------------------
# PHANES: RA's release + ATLAS R2.0 (Table 2 reads axial slice 95 of the MNI volumes)


@dataclass(frozen=True)
class AtlasLesion:
    """The stroke lesion of one ATLAS subject: an irregular ellipsoid (``phantom._blob``) centred on slice
    ``z`` in one hemisphere, 5-14 px under the brain surface (cortical-subcortical, like an MCA infarct).
    ``on_slice``: ``"cut"`` as drawn; ``"one"`` cleared below slice 96 plus one tip voxel on slice 95 (under
    the lesion); ``"none"`` must miss slice 95."""

    side: str  # L | R (RAS: left is x below the midline)
    radii: tuple[float, float, float]  # voxels (1 mm) along x, y, z before the random rotation
    z: int
    on_slice: str = "cut"


ATLAS_SLICE = 95  # recipe phanes_atlas_sl95
ATLAS_SHAPE = (108, 128, 189)  # x, y: a crop (the store is 128 px: no resize); z: MNI152NLin2009aSym's 189
ATLAS_ORIGIN = (-54.0, -82.0, -72.0)  # mm of voxel 0: the real grid's (-98, -134, -72) cropped centrally
_ATLAS_WM = 180.0  # T1w grey level of white matter (8-bit volumes: half the bytes of int16)
_ATLAS_ZOOM = 1.15  # phantom 2 mm voxels → 1.15 px in plane (a ~0.6× head), 2 px along z
# atlas_train.csv: its first four ids (site R042) and the first two of the next site (R014)
PHANES_ATLAS: dict[str, AtlasLesion] = {
    "sub-r042s010": AtlasLesion("L", (11.0, 14.0, 9.0), 97),
    "sub-r042s013": AtlasLesion("R", (7.0, 9.0, 6.0), 93),
    "sub-r042s011": AtlasLesion("L", (4.0, 5.0, 4.0), 95),
    "sub-r042s018": AtlasLesion("R", (6.0, 7.0, 5.0), 101, "one"),
    "sub-r014s010": AtlasLesion("R", (9.0, 12.0, 10.0), 90),
    "sub-r014s002": AtlasLesion("L", (6.0, 8.0, 6.0), 122, "none"),
}


def atlas_site(sub: str) -> str:
    """``sub-r042s010`` → ``R042`` (the site folder)."""
    return "R" + sub[5:sub.index("s", 5)]


def atlas_paths(sub: str) -> tuple[str, str]:
    """(T1w, lesion mask) of a training subject, relative to the root, as in ``atlas_train*.csv``."""
    anat = f"ATLAS_2/Training/{atlas_site(sub)}/{sub}/ses-1/anat/{sub}_ses-1_space-MNI152NLin2009aSym"
    return f"{anat}_T1w.nii.gz", f"{anat}_label-L_desc-T1lesion_mask.nii.gz"


def _atlas_volume(sub: str, index: int, lesion: AtlasLesion, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 T1w, uint8 mask), both [x, y, z] on ``ATLAS_SHAPE`` in RAS: a healthy phantom head (all 94 axial
    2 mm planes) resampled onto the 1 mm grid, with ``lesion`` painted dark into the brain; white matter at
    ~``_ATLAS_WM`` grey levels."""
    from datasets.phantom import TIGHT_SCAN, _blob, synth_subject

    subj = synth_subject("test", 200 + index, "healthy", 94, seed, TIGHT_SCAN)  # 94: the whole 2 mm template in z
    rng = _rng(seed, f"ATLAS/{sub}")
    t1, brain2 = subj.channels["t1"], subj.brain
    ref = _reference(t1, brain2)
    blank = np.zeros((t1.shape[0] + 2 * _PAD, t1.shape[1] + 2 * _PAD), np.float32)
    head = np.stack([_with_head(t1[:, :, k], brain2[:, :, k], ref, rng) if brain2[:, :, k].any() else blank
                     for k in range(t1.shape[2])], axis=-1)
    brain_pad = np.pad(brain2, ((_PAD, _PAD), (_PAD, _PAD), (0, 0))).astype(np.float32)
    # 1 mm voxel → 2 mm phantom coordinates: the brain's bounding box centred in plane, z as in MNI (the 2 mm
    # plane k is the centre of 1 mm slices 2k and 2k + 1)
    cx, cy = ((idx.min() + idx.max()) / 2 for idx in np.nonzero(brain2.any(axis=2)))
    cx, cy = cx + _PAD, cy + _PAD
    nx, ny, nz = ATLAS_SHAPE
    ax = [cx + (np.arange(nx) - (nx - 1) / 2) / _ATLAS_ZOOM, cy + (np.arange(ny) - (ny - 1) / 2) / _ATLAS_ZOOM,
          (np.arange(nz) - 0.5) / 2.0]
    grid = np.stack(np.meshgrid(*ax, indexing="ij"))
    vol = ndimage.map_coordinates(head, grid, order=1, mode="constant", cval=0.0, prefilter=False)
    brain = ndimage.map_coordinates(brain_pad, grid, order=1, mode="constant", cval=0.0, prefilter=False) > 0.5
    edge = np.zeros(ATLAS_SHAPE, bool)
    edge[[0, -1]], edge[:, [0, -1]] = True, True
    if (vol[edge] > 0).any():
        raise ValueError(f"miniature: the {sub} head does not fit the {nx} × {ny} ATLAS frame")

    # the lesion: a voxel of the brain on its centre slice, in its hemisphere, 5-14 px deep
    depth = ndimage.distance_transform_edt(brain[:, :, lesion.z])
    xs = np.arange(nx)[:, None]
    side = xs < (nx - 1) / 2 - 8 if lesion.side == "L" else xs > (nx - 1) / 2 + 8
    cand = np.argwhere(side & (depth >= 5) & (depth <= 14))
    x, y = cand[rng.integers(len(cand))]
    centre = np.array([x, y, lesion.z])
    radii = np.array(lesion.radii)
    box, level = _blob(rng, ATLAS_SHAPE, centre, radii, 0.4, float(radii.max()) * 1.6)
    mask = np.zeros(ATLAS_SHAPE, bool)
    mask[box] = level < 1.0
    mask &= brain
    if lesion.on_slice == "one":
        mask[:, :, :ATLAS_SLICE + 1] = False
        above = np.argwhere(mask[:, :, ATLAS_SLICE + 1])
        tip = above[np.argmin(((above - centre[:2]) ** 2).sum(axis=1))]
        mask[tip[0], tip[1], ATLAS_SLICE] = True
    on = int(mask[:, :, ATLAS_SLICE].sum())
    want = {"cut": on > 1, "one": on == 1, "none": on == 0}[lesion.on_slice]
    if not want:
        raise ValueError(f"miniature: {sub}'s lesion has {on} pixels on slice {ATLAS_SLICE} ({lesion.on_slice!r})")

    # stroke in T1: a CSF-dark cavity inside a less dark gliotic border, soft-edged, noisy
    inner = np.zeros(ATLAS_SHAPE, bool)
    inner[box] = level < 0.65
    value = np.float32(ref) * np.where(inner & mask, 0.22, 0.5).astype(np.float32)
    value *= 1.0 + 0.05 * rng.standard_normal(ATLAS_SHAPE).astype(np.float32)
    weight = ndimage.gaussian_filter(mask.astype(np.float32), 0.6)
    weight = np.where(mask, np.maximum(weight, 0.8), weight)
    vol = vol * (1.0 - weight) + value * weight
    vol *= np.float32(_ATLAS_WM / ref)
    return np.round(np.clip(vol, 0.0, 255.0)).astype(np.uint8), mask.astype(np.uint8)


def write_atlas_release(root: Path, *, seed: int = 0) -> dict:
    """Write the ATLAS R2.0 part of PHANES's miniature into ``root`` (``ATLAS_2/Training/...``); return its
    summary (ids, sites, paths, lesion voxels and pixels on slice 95)."""
    from datasets.phantom import _write_nifti

    root = Path(root)
    affine = np.eye(4)
    affine[:3, 3] = ATLAS_ORIGIN
    voxels, on_slice = {}, {}
    for i, (sub, lesion) in enumerate(PHANES_ATLAS.items()):
        t1, mask = _atlas_volume(sub, i, lesion, seed)
        for rel, arr in zip(atlas_paths(sub), (t1, mask)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            _write_nifti(root / rel, arr, affine)
        voxels[sub], on_slice[sub] = int(mask.sum()), int(mask[:, :, ATLAS_SLICE].sum())
    sites: dict[str, list[str]] = {}
    for sub in PHANES_ATLAS:
        sites.setdefault(atlas_site(sub), []).append(sub)
    return {
        "version": ATLAS_VERSION, "subjects": list(PHANES_ATLAS), "sites": sites, "slice": ATLAS_SLICE,
        "shape": list(ATLAS_SHAPE), "origin_mm": list(ATLAS_ORIGIN),
        "paths": {sub: list(atlas_paths(sub)) for sub in PHANES_ATLAS},
        "lesion_voxels": voxels, "lesion_pixels_on_slice": on_slice,
        "one_pixel": [s for s, n in on_slice.items() if n == 1],
        "empty_on_slice": [s for s, n in on_slice.items() if n == 0],
    }


def write_phanes_release(root: Path, *, seed: int = 0) -> dict:
    """Write PHANES's miniature into ``root``: RA's release (:func:`write_ra_release`, the healthy training data
    and Table 1's normal test slices) plus ATLAS R2.0 (:func:`write_atlas_release`, Table 2). The summary is
    RA's with ``release``/``version``, ``counts['atlas']`` and an ``atlas`` part; written to ``miniature.json``."""
    root = Path(root)
    ra = write_ra_release(root, seed=seed)
    atlas = write_atlas_release(root, seed=seed)
    summary = {**ra, "release": "phanes", "version": release_version("phanes"),
               "counts": {**ra["counts"], "atlas": len(atlas["subjects"])}, "atlas": atlas}
    (root / "miniature.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------------
# IterMask2: BraTS2021 (Tables 1 and 3)

BRATS_VERSION = 1  # bump on any change to the BraTS files of the itermask2 release
# real ids of IterMask2's official lists (datasets/splits/itermask2/brats2021_*.csv, first of each)
ITERMASK2_BRATS = {"train": ("BraTS2021_01012", "BraTS2021_01543", "BraTS2021_01028", "BraTS2021_01586"),
                   "val": ("BraTS2021_00452", "BraTS2021_00262"),
                   "test": ("BraTS2021_00123", "BraTS2021_00310", "BraTS2021_01650")}
BRATS_SLICES = 155  # BraTS volumes are 240 × 240 × 155 at 1 mm; the miniature keeps the 155 axial slices
_BRATS_SLAB = 44  # 2 mm phantom planes per volume → 88 slices at 1 mm, centred on z = 80 (IterMask2 reads 70–89)
_BRATS_LABEL = {1: 1, 2: 2, 3: 4}  # phantom tumour labels → BraTS 2021 (NCR, ED, ET: 4 is enhancing)


def _brats_case(case: str, split: str, index: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({flair, t1, t1ce, t2}: int16 [S, S, 155]), uint8 seg): a skull-stripped phantom brain, each 2 mm plane
    doubled in z and the slab centred on z = 80, square in plane. Test cases hold a tumour crossing z 70–89;
    training and validation cases are tumour-free (a real BraTS case always has one; IterMask2 only reads the
    tumour-free slices of those splits, and the miniature then gives 20 of them per case)."""
    from datasets.phantom import TIGHT_SCAN, synth_subject

    pathology = "tumour" if split == "test" else "healthy"
    subj = synth_subject(split, 300 + index, pathology, _BRATS_SLAB, seed, TIGHT_SCAN)
    nx, ny, _ = subj.brain.shape
    side = max(nx, ny) + 8
    ox, oy, oz = (side - nx) // 2, (side - ny) // 2, 80 - _BRATS_SLAB
    def place(a: np.ndarray) -> np.ndarray:
        out = np.zeros((side, side, BRATS_SLICES), a.dtype)
        out[ox:ox + nx, oy:oy + ny, oz:oz + 2 * _BRATS_SLAB] = np.repeat(a, 2, axis=2)
        return out

    seg = np.zeros(subj.brain.shape, np.uint8) if subj.seg is None else subj.seg
    labels = place(np.vectorize(lambda v: _BRATS_LABEL.get(int(v), 0), otypes=[np.uint8])(seg))
    mods = {m: subj.channels[m] for m in ("flair", "t1", "t2")}
    rng = _rng(seed, f"BraTS/{case}")
    enhance = np.where(seg == 3, rng.uniform(1.6, 2.0), np.where(seg == 1, 0.6, 1.0)).astype(np.float32)
    mods["t1ce"] = subj.channels["t1"] * enhance  # contrast uptake in the enhancing rim, dark necrosis
    vols = {m: place(np.round(np.clip(v, 0, 32767)).astype(np.int16)) for m, v in mods.items()}
    if split == "test" and not labels[:, :, 70:90].any():
        raise ValueError(f"miniature: {case}'s tumour misses IterMask2's slices 70-89")
    return vols, labels


# ISLES 2015 SISS: all 28 training cases (the suite's 4-fold CV tests each one once), the phantom at 4 mm in plane
# and 2 mm in z (uncompressed like the release, so small)
ISLES_CASES = tuple(range(1, 29))
_ISLES_SLAB = 30  # axial planes; the recipe's 20-slice band sits at the brain's z-midpoint
_ISLES_VSD0 = 70600  # SMIR object ids: per case, MR_Flair/T1/T2/DWI = vsd0 + 10·case + 0..3, OT = + 9
# ATLAS v2.0 under the suite split (datasets/splits/itermask2/atlas2_suite_split.csv, first ids of each split):
# training / validation lesions lie above the recipe's band, test lesions in it
ITERMASK2_ATLAS = {
    "train": {"sub-r001s001": AtlasLesion("L", (7.0, 9.0, 6.0), 128, "none"),
              "sub-r001s003": AtlasLesion("R", (6.0, 8.0, 6.0), 132, "none"),
              "sub-r001s005": AtlasLesion("R", (8.0, 7.0, 6.0), 130, "none"),
              "sub-r001s006": AtlasLesion("L", (6.0, 6.0, 5.0), 127, "none")},
    "val": {"sub-r001s002": AtlasLesion("L", (6.0, 8.0, 6.0), 129, "none"),
            "sub-r001s012": AtlasLesion("R", (7.0, 7.0, 5.0), 131, "none")},
    "test": {"sub-r001s004": AtlasLesion("L", (9.0, 12.0, 9.0), 95),
             "sub-r001s008": AtlasLesion("R", (6.0, 8.0, 6.0), 92),
             "sub-r001s022": AtlasLesion("R", (10.0, 9.0, 8.0), 97)},
}


def _half(a: np.ndarray) -> np.ndarray:
    """2 × 2 in-plane block mean (odd trailing rows / columns dropped)."""
    nx, ny = (d - d % 2 for d in a.shape[:2])
    return a[:nx, :ny].reshape(nx // 2, 2, ny // 2, 2, -1).mean(axis=(1, 3))


def _isles_case(case: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({Flair, T1, T2, DWI}: int16 [X, Y, 30]), uint8 OT): a skull-stripped stroke phantom whose lesion crosses
    the middle 20 planes and leaves some of them lesion-free (each case is trained on in three folds and tested
    in one); the first draw of (case, attempt) that does so."""
    from datasets.phantom import TIGHT_SCAN, synth_subject

    lo = _ISLES_SLAB // 2 - 10
    for attempt in range(20):
        subj = synth_subject("test", 400 + 40 * attempt + case, "stroke", _ISLES_SLAB, seed, TIGHT_SCAN)
        ot = (_half((subj.seg > 0).astype(np.float32)) >= 0.5).astype(np.uint8)
        per_z = ot.reshape(-1, _ISLES_SLAB).any(axis=0)[lo:lo + 20]
        if per_z.any() and not per_z.all():
            break
    else:
        raise ValueError(f"miniature: no ISLES case {case} with a lesion in part of the band")
    rng = _rng(seed, f"ISLES/{case}")
    dwi = subj.channels["t2"] * np.where(subj.seg > 0, rng.uniform(1.8, 2.4), 1.0).astype(np.float32)
    mods = {"Flair": subj.channels["flair"], "T1": subj.channels["t1"], "T2": subj.channels["t2"], "DWI": dwi}
    return {m: np.round(np.clip(_half(v), 0, 32767)).astype(np.int16) for m, v in mods.items()}, ot


def write_isles_release(root: Path, *, seed: int = 0) -> dict:
    """ISLES 2015 SISS training cases as SMIR ships them:
    ``SISS2015_Training/<n>/VSD.Brain.XX.O.MR_<Seq>.<id>/VSD.Brain.XX.O.MR_<Seq>.<id>.nii`` (Flair, T1, T2, DWI)
    and ``…/VSD.Brain.XX.O.OT.<id>/…OT.<id>.nii`` (uint8 {0, 1}), uncompressed NIfTI, 4 × 4 × 2 mm."""
    from datasets.phantom import _write_nifti

    affine = np.diag([4.0, 4.0, 2.0, 1.0])
    lesion = {}
    for case in ISLES_CASES:
        vols, ot = _isles_case(case, seed)
        items = [(f"MR_{m}", _ISLES_VSD0 + 10 * case + i, v) for i, (m, v) in enumerate(vols.items())]
        for kind, vsd, arr in items + [("OT", _ISLES_VSD0 + 10 * case + 9, ot)]:
            name = f"VSD.Brain.XX.O.{kind}.{vsd}"
            folder = Path(root) / "SISS2015_Training" / str(case) / name
            folder.mkdir(parents=True, exist_ok=True)
            _write_nifti(folder / f"{name}.nii", arr, affine)
        lesion[f"training{case:02d}"] = int(ot.sum())
    return {"cases": [f"training{c:02d}" for c in ISLES_CASES], "lesion_voxels": lesion}


def write_itermask2_atlas(root: Path, *, seed: int = 0) -> dict:
    """The ATLAS v2.0 subjects of :data:`ITERMASK2_ATLAS` in the release layout (:func:`atlas_paths`)."""
    from datasets.phantom import _write_nifti

    affine = np.eye(4)
    affine[:3, 3] = ATLAS_ORIGIN
    voxels = {}
    for split, subs in ITERMASK2_ATLAS.items():
        for i, (sub, les) in enumerate(subs.items()):
            t1, mask = _atlas_volume(sub, 40 + 10 * len(voxels) + i, les, seed)
            for rel, arr in zip(atlas_paths(sub), (t1, mask)):
                (Path(root) / rel).parent.mkdir(parents=True, exist_ok=True)
                _write_nifti(Path(root) / rel, arr, affine)
            voxels[sub] = int(mask.sum())
    return {"subjects": {split: list(subs) for split, subs in ITERMASK2_ATLAS.items()}, "lesion_voxels": voxels}


def write_itermask2_release(root: Path, *, seed: int = 0) -> dict:
    """Write IterMask2's miniature into ``root``: BraTS2021 training-release case folders
    (``BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz``, int16 images and uint8 labels {0, 1, 2, 4}
    in BraTS's LPS-flipped affine) for the ids of :data:`ITERMASK2_BRATS` (Tables 1, 3), the 28 ISLES 2015 SISS
    training cases (:func:`write_isles_release`) and ATLAS v2.0 subjects of the suite split
    (:func:`write_itermask2_atlas`) for Table 2; summary in ``miniature.json``."""
    from datasets.phantom import _write_nifti

    root = Path(root)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    written, lesion = {}, {}
    for split, cases in ITERMASK2_BRATS.items():
        for i, case in enumerate(cases):
            vols, seg = _brats_case(case, split, i, seed)
            folder = root / case
            folder.mkdir(parents=True, exist_ok=True)
            for m, v in vols.items():
                _write_nifti(folder / f"{case}_{m}.nii.gz", v, affine)
            _write_nifti(folder / f"{case}_seg.nii.gz", seg, affine)
            written[case] = split
            lesion[case] = int((seg[:, :, 70:90] > 0).sum())
    summary = {"release": "itermask2", "version": release_version("itermask2"), "brats": written,
               "lesion_voxels_z70_89": lesion, "shape": list(vols["flair"].shape),
               "isles": write_isles_release(root, seed=seed), "atlas": write_itermask2_atlas(root, seed=seed)}
    (root / "miniature.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------------
# AFSC: HCP T2w (training), BraTS2017 and ISBI 2015 = MS-SEG2015 (tests), each under its own folder of one root

AFSC_VERSION = 1  # bump on any change to the afsc release's written bytes
AFSC_DIRS = {"hcp": "HCP", "brats2017": "MICCAI_BraTS17_Data_Training", "isbi2015": "ISBI2015"}
# real S500 ids; the suite's seeded 5 % hold-out (setup afsc-hcp) puts one of the six in val
AFSC_HCP = ("100307", "100408", "101107", "101309", "101915", "103111")
AFSC_BRATS = {"HGG": ("Brats17_2013_10_1", "Brats17_CBICA_AAB_1", "Brats17_TCIA_105_1"),
              "LGG": ("Brats17_2013_0_1", "Brats17_TCIA_101_1")}
AFSC_ISBI = {1: (1, 2), 2: (1, 2)}  # patient → time points: training01_01, _02 and training02_01, _02
# HCP MNINonLinear at 0.7 mm: FSL's MNI152 0.7 mm grid, stored L-A-S (x flipped), the real 260 × 311 × 260
HCP_SHAPE = (260, 311, 260)
HCP_AFFINE = np.array([[-0.7, 0.0, 0.0, 90.0], [0.0, 0.7, 0.0, -126.0], [0.0, 0.0, 0.7, -72.0], [0.0, 0.0, 0.0, 1.0]])
# BraTS2017: 240 × 240 × 155 at 1 mm, stored L-P-S with BraTS's affine diag(-1, -1, 1); the phantom's MNI brain is
# placed by the sampling affine below (file voxel → MNI mm, same axis directions): brain centred in plane, z -70…+84
BRATS2017_SHAPE = (240, 240, 155)
BRATS2017_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
_BRATS2017_MNI = np.array([[-1.0, 0.0, 0.0, 118.0], [0.0, -1.0, 0.0, 103.0], [0.0, 0.0, 1.0, -70.0],
                           [0.0, 0.0, 0.0, 1.0]])
# phantom labels (core, oedema, rim) → BraTS 2017 (1 NCR/NET, 2 ED, 4 ET); the LGG rim is non-enhancing core
_BRATS2017_LABEL = {"HGG": {1: 1, 2: 2, 3: 4}, "LGG": {1: 1, 2: 2, 3: 1}}
# ISBI 2015 preprocessed: the MNI 181 × 217 × 181 1 mm grid (RAS, voxel 0 at (-90, -126, -72) mm); the files are
# uncompressed like the release, so the miniature keeps the real in-plane grid but only ISBI_SLAB axial slices from
# z = ISBI_Z0 mm (through the lateral ventricles' bodies, where the phantom puts periventricular MS lesions)
ISBI_GRID = (181, 217, 181)
ISBI_SLAB = 12
ISBI_Z0 = 2.0
ISBI_AFFINE = np.array([[1.0, 0.0, 0.0, -90.0], [0.0, 1.0, 0.0, -126.0], [0.0, 0.0, 1.0, ISBI_Z0],
                        [0.0, 0.0, 0.0, 1.0]])
_ISBI_PHANTOM_SLAB = 24  # 2 mm planes around the brain centre (48 mm): lesions fall in and out of the 12 mm slab
_U8_TOP = (110.0, 130.0)  # a volume's 99.5th brain percentile lands here: 8-bit files (half the bytes of
# int16), ~120 grey levels in the brain (a quarter fewer gzip bytes than ~220)


def _regrid(vol: np.ndarray, src: np.ndarray, dst: np.ndarray, shape: tuple[int, ...],
            linear: tuple[bool, bool, bool], dtype: type | None = None) -> np.ndarray:
    """``vol`` (voxel → mm by the axis-aligned affine ``src``) sampled on the axis-aligned grid ``dst`` × ``shape``,
    one axis at a time: linear along the axes marked in ``linear`` (done first, while the array is small), nearest
    (half up) along the others; 0 outside. ``dtype``: the result is rounded to it before the nearest axes (cheap
    gathers of small values). Nearest in plane keeps a 2 mm phantom voxel a block of equal values: gzip stores
    those cheaply."""
    for a in (src, dst):
        if not np.allclose(a[:3, :3], np.diag(np.diag(a[:3, :3]))):
            raise ValueError("miniature: _regrid needs axis-aligned affines")
    out = np.asarray(vol, dtype=np.float32)
    coords = [(dst[ax, 3] + dst[ax, ax] * np.arange(shape[ax]) - src[ax, 3]) / src[ax, ax] for ax in range(3)]
    for ax in (a for a in range(3) if linear[a]):
        n, c = out.shape[ax], coords[ax]
        bcast = [1, 1, 1]
        bcast[ax] = -1
        i0 = np.floor(c).astype(np.int64)
        w = (c - i0).astype(np.float32)
        acc = np.zeros(1, np.float32)
        for i, wt in ((i0, 1.0 - w), (i0 + 1, w)):
            ok = (i >= 0) & (i < n)
            acc = acc + np.take(out, np.clip(i, 0, n - 1), axis=ax) * (wt * ok).reshape(bcast)
        out = acc
    if dtype is not None:
        info = np.iinfo(dtype)
        out = np.round(np.clip(out, info.min, info.max)).astype(dtype)
    for ax in (a for a in range(3) if not linear[a]):
        n, i = out.shape[ax], np.floor(coords[ax] + 0.5).astype(np.int64)
        pad = [(0, 0)] * 3
        pad[ax] = (1, 0)  # index 0: a plane of zeros for every voxel outside the source
        out = np.take(np.pad(out, pad), np.where((i >= 0) & (i < n), i + 1, 0), axis=ax)
    return out


def _regrid_labels(seg: np.ndarray, src: np.ndarray, dst: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A label map on another grid: nearest along every axis (exact for upsampling: no label is lost)."""
    return _regrid(seg, src, dst, shape, (False, False, False), np.uint8)


def _u8_scale(v: np.ndarray, rng: np.random.Generator) -> np.float32:
    """Gain that puts the 99.5th percentile of a volume's voxels > 0 at a random level in ``_U8_TOP`` (8-bit files)."""
    return np.float32(rng.uniform(*_U8_TOP) / float(np.percentile(v[v > 0], 99.5)))


def _write_gz(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    """``phantom._write_nifti`` at gzip level 6 (mtime 0: byte-stable): ~10 % smaller than its level 1 on these
    blocky 8-bit volumes, which are most of the afsc release's bytes."""
    import gzip

    import nibabel as nib

    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


def _edge_clear(a: np.ndarray, what: str, axes: tuple[int, ...] = (0, 1, 2)) -> None:
    """The brain must fit the grid: nothing on the outer faces of ``axes``."""
    for ax in axes:
        if np.take(a, [0, -1], axis=ax).any():
            raise ValueError(f"miniature: the {what} brain touches the edge of its grid (axis {ax})")


def hcp_paths(sid: str) -> tuple[str, str]:
    """(T1w, T2w) of an HCP subject, relative to the afsc root."""
    base = f"{AFSC_DIRS['hcp']}/{sid}/MNINonLinear"
    return f"{base}/T1w_restore_brain.nii.gz", f"{base}/T2w_restore_brain.nii.gz"


def brats2017_paths(case: str) -> dict[str, str]:
    """{flair, t1, t1ce, t2, seg}: a BraTS 2017 case's files, relative to the afsc root."""
    grade = next(g for g, cases in AFSC_BRATS.items() if case in cases)
    return {m: f"{AFSC_DIRS['brats2017']}/{grade}/{case}/{case}_{m}.nii.gz"
            for m in ("flair", "t1", "t1ce", "t2", "seg")}


def isbi_scan(patient: int, tp: int) -> str:
    return f"training{patient:02d}_{tp:02d}"


def isbi_paths(patient: int, tp: int) -> dict[str, str]:
    """{flair, mprage, pd, t2, mask1, mask2}: one ISBI 2015 training scan's files, relative to the afsc root."""
    base, scan = f"{AFSC_DIRS['isbi2015']}/training/training{patient:02d}", isbi_scan(patient, tp)
    out = {m: f"{base}/preprocessed/{scan}_{m}_pp.nii" for m in ("flair", "mprage", "pd", "t2")}
    return {**out, **{f"mask{r}": f"{base}/masks/{scan}_mask{r}.nii" for r in (1, 2)}}


def _hcp_subject(index: int, seed: int) -> dict[str, np.ndarray]:
    """{T1w, T2w}: uint8 [260, 311, 260] on the HCP grid: a healthy phantom brain (all 94 axial 2 mm planes), nearest
    in plane (2 mm blocks) and linear along z."""
    from datasets.phantom import TIGHT_SCAN, synth_subject

    subj = synth_subject("train", 600 + index, "healthy", 94, seed, TIGHT_SCAN)
    rng = _rng(seed, f"HCP/{AFSC_HCP[index]}")
    out = {}
    for name, ch in (("T1w", "t1"), ("T2w", "t2")):
        v = subj.channels[ch]
        out[name] = _regrid(v * _u8_scale(v, rng), subj.affine, HCP_AFFINE, HCP_SHAPE, (False, False, True), np.uint8)
    _edge_clear(out["T2w"], f"HCP {AFSC_HCP[index]}", axes=(0, 1))  # z: the grid starts where the template does
    return out


def _brats2017_case(case: str, grade: str, index: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({flair, t1, t1ce, t2}: uint8 [240, 240, 155], uint8 seg): a skull-stripped phantom brain with a tumour at its
    real size (2 mm blocks in plane, linear along z); HGG: labels 1, 2, 4 (enhancing rim in t1ce), LGG: 1, 2."""
    from datasets.phantom import TIGHT_SCAN, synth_subject

    subj = synth_subject("test", 700 + index, "tumour", 94, seed, TIGHT_SCAN)
    seg2 = subj.seg
    rng = _rng(seed, f"BraTS2017/{case}")
    hgg = grade == "HGG"
    enhance = np.where(seg2 == 3, rng.uniform(1.6, 2.0) if hgg else 1.0, np.where(seg2 == 1, 0.6 if hgg else 0.9, 1.0))
    mods = {"flair": subj.channels["flair"], "t1": subj.channels["t1"],
            "t1ce": subj.channels["t1"] * enhance.astype(np.float32), "t2": subj.channels["t2"]}
    vols = {m: _regrid(v * _u8_scale(v, rng), subj.affine, _BRATS2017_MNI, BRATS2017_SHAPE, (False, False, True),
                       np.uint8) for m, v in mods.items()}
    _edge_clear(vols["t2"], f"BraTS {case}", axes=(0, 1))
    table = _BRATS2017_LABEL[grade]
    lab2 = np.zeros_like(seg2)
    for v, b in table.items():
        lab2[seg2 == v] = b
    seg = _regrid_labels(lab2, subj.affine, _BRATS2017_MNI, BRATS2017_SHAPE)
    have = [int(v) for v in np.flatnonzero(np.bincount(seg.ravel(), minlength=5)[1:]) + 1]
    want = [1, 2, 4] if hgg else [1, 2]
    if have != want:
        raise ValueError(f"miniature: {case} ({grade}) has labels {have}, not {want}")
    return vols, seg


def _isbi_patient(patient: int, seed: int) -> tuple["PhantomSubject", np.ndarray]:
    """(the MS phantom subject, its rater-1 mask on the ISBI slab): the first draw whose lesions cross the slab and
    leave at least a quarter of its slices lesion-free (AFSC scores slices: both kinds are needed)."""
    from datasets.phantom import TIGHT_SCAN, synth_subject

    shape = (*ISBI_GRID[:2], ISBI_SLAB)
    for attempt in range(40):
        subj = synth_subject("test", 800 + 40 * attempt + patient, "ms", _ISBI_PHANTOM_SLAB, seed, TIGHT_SCAN)
        mask = _regrid_labels((subj.seg > 0).astype(np.uint8), subj.affine, ISBI_AFFINE, shape)
        per_z = mask.reshape(-1, ISBI_SLAB).any(axis=0)
        if per_z.sum() >= 3 and (~per_z).sum() >= ISBI_SLAB // 4:
            return subj, mask
    raise ValueError(f"miniature: no MS phantom for ISBI patient {patient} with lesions in part of the slab")


def _rater2(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A second rater: the same lesions with their borders redrawn (grown by a voxel where a smooth random field is
    high, shrunk where it is low)."""
    from datasets.phantom import _smooth_field

    m = mask > 0
    field = _smooth_field(rng, m.shape, 4.0)
    grow = ndimage.binary_dilation(m) & ~m & (field > 0.4)
    shrink = m & ~ndimage.binary_erosion(m) & (field < -0.4)
    return ((m & ~shrink) | grow).astype(np.uint8)


def _isbi_scans(patient: int, tps: tuple[int, ...], seed: int
                ) -> dict[int, tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]:
    """{time point: ({flair, mprage, pd, t2}: uint8 [181, 217, ISBI_SLAB], mask1, mask2)} of one patient: one phantom
    anatomy and lesion load, each time point its own gain and smooth bias field; linear interpolation (uncompressed
    files: blocks would save nothing). PD is a T1/T2 mix (CSF ≳ GM > WM, lesions bright)."""
    from datasets.phantom import _smooth_field

    subj, mask1 = _isbi_patient(patient, seed)
    shape = (*ISBI_GRID[:2], ISBI_SLAB)
    ch = subj.channels
    brain = subj.brain
    unit = {k: v / np.float32(np.percentile(v[brain], 99.5)) for k, v in ch.items()}
    base = {"flair": unit["flair"], "mprage": unit["t1"], "t2": unit["t2"],
            "pd": np.where(brain, 0.35 * unit["t1"] + 0.65 * unit["t2"], 0.0).astype(np.float32)}
    out = {}
    for tp in tps:
        rng = _rng(seed, f"ISBI/{isbi_scan(patient, tp)}")
        vols = {}
        for m, v in base.items():
            bias = np.exp(0.06 * _smooth_field(rng, v.shape, 16.0)).astype(np.float32)
            v = v * bias
            vols[m] = _regrid(v * _u8_scale(v, rng), subj.affine, ISBI_AFFINE, shape, (True, True, True), np.uint8)
        _edge_clear(vols["t2"], f"ISBI {isbi_scan(patient, tp)}", axes=(0, 1))
        mask2 = _rater2(mask1, rng)
        out[tp] = (vols, mask1, mask2)
    return out


def write_afsc_release(root: Path, *, seed: int = 0) -> dict:
    """Write AFSC's miniature into ``root`` (layout in the module docstring): HCP (:data:`AFSC_HCP`,
    :func:`hcp_paths`), BraTS 2017 (:data:`AFSC_BRATS`, :func:`brats2017_paths`) and ISBI 2015 (:data:`AFSC_ISBI`,
    :func:`isbi_paths`), each under its folder of :data:`AFSC_DIRS`; return the summary (ids, grids, BraTS labels
    and tumour slices, ISBI lesion voxels per rater) that is also written to ``root/miniature.json``."""
    from datasets.phantom import _write_nifti

    root = Path(root)
    hcp = {}
    for i, sid in enumerate(AFSC_HCP):
        vols = _hcp_subject(i, seed)
        for rel, name in zip(hcp_paths(sid), ("T1w", "T2w")):
            _write_gz(root / rel, vols[name], HCP_AFFINE)
        hcp[sid] = int((vols["T2w"] > 0).sum())
    brats, labels, tumour_slices = {}, {}, {}
    index = 0
    for grade, cases in AFSC_BRATS.items():
        for case in cases:
            vols, seg = _brats2017_case(case, grade, index, seed)
            index += 1
            paths = brats2017_paths(case)
            for m, arr in (*vols.items(), ("seg", seg)):
                _write_gz(root / paths[m], arr, BRATS2017_AFFINE)
            brats[case] = grade
            labels[case] = [int(v) for v in np.flatnonzero(np.bincount(seg.ravel(), minlength=5)[1:]) + 1]
            tumour_slices[case] = int(seg.reshape(-1, seg.shape[2]).any(axis=0).sum())
    isbi, lesion = {}, {}
    for patient, tps in AFSC_ISBI.items():
        for tp, (vols, mask1, mask2) in _isbi_scans(patient, tps, seed).items():
            paths, scan = isbi_paths(patient, tp), isbi_scan(patient, tp)
            for m, arr in (*vols.items(), ("mask1", mask1), ("mask2", mask2)):
                (root / paths[m]).parent.mkdir(parents=True, exist_ok=True)
                _write_nifti(root / paths[m], arr, ISBI_AFFINE)
            isbi[scan] = f"training{patient:02d}"
            lesion[scan] = {"mask1": int(mask1.sum()), "mask2": int(mask2.sum()),
                            "slices_mask1": int(mask1.reshape(-1, ISBI_SLAB).any(axis=0).sum())}
    summary = {
        "release": "afsc", "version": release_version("afsc"), "seed": seed, "folders": dict(AFSC_DIRS),
        "counts": {"hcp": len(hcp), "brats2017": len(brats), "brats2017_hgg": len(AFSC_BRATS["HGG"]),
                   "brats2017_lgg": len(AFSC_BRATS["LGG"]), "isbi2015_scans": len(isbi),
                   "isbi2015_patients": len(set(isbi.values()))},
        "hcp": {"subjects": list(hcp), "shape": list(HCP_SHAPE), "spacing_mm": 0.7, "brain_voxels": hcp},
        "brats2017": {"grades": brats, "shape": list(BRATS2017_SHAPE), "labels": labels,
                      "tumour_slices": tumour_slices},
        "isbi2015": {"scans": isbi, "shape": [*ISBI_GRID[:2], ISBI_SLAB], "full_grid": list(ISBI_GRID),
                     "z0_mm": ISBI_Z0, "lesion": lesion},
    }
    (root / "miniature.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------------
# ProxyAno: the two Kaggle brain-tumour sets (merged into one dataset), Kermany OCT2017 and IDRiD, one folder each

PROXYANO_VERSION = 1  # bump on any change to the proxyano release's written bytes
PROXYANO_DIRS = {"brain_tumor_detection": "brain-mri-images-for-brain-tumor-detection",
                 "brain_tumor_classification": "brain-tumor-classification-mri", "oct2017": "OCT2017",
                 "idrid": "idrid"}
PROXYANO_SETUPS = ("proxyano-brain", "proxyano-oct2017", "proxyano-idrid")


@dataclass(frozen=True)
class KaggleImage:
    """One file of the Kaggle brain sets: its path under the release root, what its bytes are (``fmt``, ``mode``: the
    extension may lie, as in the real ``yes/``/``no/`` set) and what it shows (``finding``: "" for a normal)."""

    rel: str
    fmt: str  # JPEG | PNG
    mode: str  # L | RGB | RGBA | P
    finding: str = ""  # "" | tumour (yes/) | glioma | meningioma | pituitary


def _kaggle_images() -> tuple[KaggleImage, ...]:
    yn, fc = PROXYANO_DIRS["brain_tumor_detection"], PROXYANO_DIRS["brain_tumor_classification"]
    # navoneel yes/no: real file names, each with its real format and mode (README §2a of the shared data)
    out = [KaggleImage(f"{yn}/no/{name}", fmt, mode) for name, fmt, mode in (
        ("1 no.jpeg", "JPEG", "L"), ("N1.JPG", "JPEG", "RGB"), ("N15.jpg", "JPEG", "L"), ("No15.jpg", "PNG", "RGBA"),
        ("no 9.png", "PNG", "RGB"), ("no 91.jpeg", "JPEG", "RGB"), ("no 98.jpg", "PNG", "P"))]
    out += [KaggleImage(f"{yn}/yes/{name}", fmt, mode, "tumour") for name, fmt, mode in (
        ("Y1.jpg", "JPEG", "RGB"), ("Y10.jpg", "JPEG", "L"), ("Y100.JPG", "JPEG", "RGB"), ("Y109.JPG", "JPEG", "RGB"),
        ("Y12.jpg", "JPEG", "L"), ("Y146.JPG", "JPEG", "RGB"), ("Y33.jpg", "JPEG", "RGB"), ("Y92.png", "PNG", "L"))]
    # Bhuvaji's four classes: RGB JPEG throughout, the real naming of each folder
    names = {("Training", "no_tumor"): ("1.jpg", "2.jpg", "3.jpg", "4.jpg", "image (10).jpg", "image (11).jpg",
                                        "image (12).jpg"),
             ("Testing", "no_tumor"): ("image(1).jpg", "image(10).jpg", "image(100).jpg", "image(11).jpg",
                                       "image(12).jpg", "image(13).jpg", "image(14).jpg")}
    for cls, prefix in (("glioma", "gg"), ("meningioma", "m"), ("pituitary", "p")):
        names[("Training", f"{cls}_tumor")] = (f"{prefix} (1).jpg", f"{prefix} (2).jpg")
        names[("Testing", f"{cls}_tumor")] = ("image(1).jpg", "image(2).jpg")
    for (part, folder), files in names.items():
        finding = "" if folder == "no_tumor" else folder.split("_")[0]
        out += [KaggleImage(f"{fc}/{part}/{folder}/{n}", "JPEG", "RGB", finding) for n in files]
    return tuple(out)


PROXYANO_BRAIN = _kaggle_images()
# the planted near-duplicate across the two sets: a 1.2× rescaled, re-encoded copy of a yes/no normal among the
# four-class test normals; both normal, so the split's pHash de-duplication keeps the first by subject id (the copy,
# four_class/…) and leaves out yes_no/no/N1
PROXYANO_BRAIN_DUPLICATE = (f"{PROXYANO_DIRS['brain_tumor_detection']}/no/N1.JPG",
                            f"{PROXYANO_DIRS['brain_tumor_classification']}/Testing/no_tumor/image(14).jpg")
_PHASH_APART = 12  # every other pair of brain images differs in at least this many pHash bits (the split's rule: ≤ 4)


def kaggle_subject_id(rel: str) -> str:
    """The ``brain_mri_tumor`` subject id of a file of :data:`PROXYANO_BRAIN` (its path under the release root)."""
    parts = Path(rel).parts
    stem = Path(rel).stem
    if parts[0] == PROXYANO_DIRS["brain_tumor_detection"]:
        return f"yes_no/{parts[1]}/{stem}"
    return f"four_class/{parts[1]}/{parts[2]}/{stem}"


# OCT2017 as the Kaggle mirror ships it: <CLASS>-<patient>-<n>.jpeg; the val names are real (8 per class in the
# mirror), the train and test patient ids made up
PROXYANO_OCT: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {"NORMAL": ("NORMAL-1017237-1", "NORMAL-1017237-2", "NORMAL-1025642-1", "NORMAL-1048771-1",
                         "NORMAL-1048771-2", "NORMAL-1048771-3", "NORMAL-1101356-1", "NORMAL-1129844-1",
                         "NORMAL-1163089-1", "NORMAL-1163089-2", "NORMAL-1207519-1", "NORMAL-1238863-1",
                         "NORMAL-1238863-2", "NORMAL-1260417-1"),
              "CNV": ("CNV-1016042-1",), "DME": ("DME-1072015-1",), "DRUSEN": ("DRUSEN-1083159-1",)},
    "test": {"NORMAL": ("NORMAL-1384-1", "NORMAL-2362-1"), "CNV": ("CNV-103044-1", "CNV-172472-1"),
             "DME": ("DME-111660-1", "DME-30521-1"), "DRUSEN": ("DRUSEN-228939-1", "DRUSEN-95633-1")},
    "val": {"NORMAL": ("NORMAL-4872585-1",), "CNV": ("CNV-6294785-1",), "DME": ("DME-9583225-1",),
            "DRUSEN": ("DRUSEN-9800172-2",)},
}
OCT_HEIGHT, OCT_WIDTHS = 496, (512, 768)  # the Spectralis B-scans of the set: 512 × 496 mostly, some 768 × 496

# IDRiD at 1/8 of the real 4288 × 2848 frame (3:2, like the release); part A: real ids of both sets, the masks each
# has (MA, HE, EX, SE, OD; a missing file = no lesion of that type, as IDRiD ships 01 and 02 without SE);
# part B: real ids with their real (grade, macular-oedema risk) rows of the grading CSVs
IDRID_SHAPE = (356, 536)  # (height, width)
IDRID_MASK_DIRS = {"MA": "1. Microaneurysms", "HE": "2. Haemorrhages", "EX": "3. Hard Exudates",
                   "SE": "4. Soft Exudates", "OD": "5. Optic Disc"}
IDRID_SETS = {"train": "a. Training Set", "test": "b. Testing Set"}
PROXYANO_IDRID_A: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {"IDRiD_01": ("MA", "HE", "EX", "OD"), "IDRiD_02": ("MA", "HE", "EX", "OD"),
              "IDRiD_03": ("MA", "HE", "EX", "SE", "OD")},
    "test": {"IDRiD_55": ("MA", "HE", "EX", "SE", "OD"), "IDRiD_56": ("MA", "EX", "OD")},
}
PROXYANO_IDRID_B: dict[str, dict[str, tuple[int, int]]] = {
    "train": {"IDRiD_001": (3, 2), "IDRiD_003": (2, 2), "IDRiD_118": (0, 0), "IDRiD_138": (0, 0),
              "IDRiD_139": (0, 0), "IDRiD_140": (0, 0), "IDRiD_141": (0, 0), "IDRiD_142": (0, 0),
              "IDRiD_143": (0, 0), "IDRiD_144": (0, 0)},
    "test": {"IDRiD_001": (4, 0), "IDRiD_029": (0, 0)},
}
IDRID_CSV = {"train": "a. IDRiD_Disease Grading_Training Labels.csv",
             "test": "b. IDRiD_Disease Grading_Testing Labels.csv"}


def idrid_paths(part: str, split: str, image: str) -> dict[str, str]:
    """{image, <mask type>…}: an IDRiD image and its masks (part A), relative to the proxyano root."""
    base = f"{PROXYANO_DIRS['idrid']}/{'A. Segmentation' if part == 'A' else 'B. Disease Grading'}"
    out = {"image": f"{base}/1. Original Images/{IDRID_SETS[split]}/{image}.jpg"}
    if part == "A":
        gt = f"{base}/2. All Segmentation Groundtruths/{IDRID_SETS[split]}"
        out |= {t: f"{gt}/{IDRID_MASK_DIRS[t]}/{image}_{t}.tif" for t in PROXYANO_IDRID_A[split][image]}
    return out


def proxyano_roots(root: Path) -> dict[str, Path]:
    """The root each ProxyAno setup's ``prepare`` takes: the release root itself for all three (the merged brain
    adapter finds both Kaggle sets one level under it, OCT2017 finds ``OCT2017/``, IDRiD its folder one level down)."""
    return {sid: Path(root) for sid in PROXYANO_SETUPS}


def _save_image(path: Path, grey: np.ndarray | None, fmt: str, mode: str, *, rgb: np.ndarray | None = None,
                quality: int = 90) -> None:
    """An 8-bit image file with the given container format and PIL mode (grey data stored as RGB/RGBA/palette like
    the Kaggle files); ``rgb`` instead of ``grey`` for colour pictures. Byte-stable: no timestamps, fixed settings."""
    from PIL import Image

    if rgb is not None:
        im = Image.fromarray(rgb)
    elif mode == "L":
        im = Image.fromarray(grey)
    elif mode == "RGB":
        im = Image.fromarray(np.ascontiguousarray(np.dstack([grey] * 3)))
    elif mode == "RGBA":
        im = Image.fromarray(np.ascontiguousarray(np.dstack([grey] * 3 + [np.full_like(grey, 255)])))
    elif mode == "P":  # a grey palette: index = level
        im = Image.frombytes("P", (grey.shape[1], grey.shape[0]), np.ascontiguousarray(grey).tobytes())
        im.putpalette([v for i in range(256) for v in (i, i, i)])
    else:
        raise ValueError(f"miniature: unknown image mode {mode!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, format="JPEG", quality=quality)
    else:
        im.save(buf, format="PNG", compress_level=6)
    path.write_bytes(buf.getvalue())


def _to_u8(a: np.ndarray) -> np.ndarray:
    return np.round(np.clip(a, 0.0, 255.0)).astype(np.uint8)


def _brain_mri(finding: str, rng: np.random.Generator) -> np.ndarray:
    """uint8 [H, W] (each side 96-300 px): an axial brain MRI phantom: a rotated elliptic head with a scalp/skull ring,
    folded grey/white matter, ventricles and a midline, in T1-, T2- or FLAIR-like contrast; a tumour for ``finding``
    (glioma: intra-axial mass with oedema, maybe ring-enhancing; meningioma: round, bright, against the skull;
    pituitary: small, bright, low in the midline; tumour: any of them)."""
    w = int(rng.integers(120, 301))
    h = int(np.clip(round(w * rng.uniform(0.85, 1.25)), 96, 300))
    yy, xx = np.mgrid[:h, :w].astype(np.float32) + 0.5
    cx, cy = w * rng.uniform(0.46, 0.54), h * rng.uniform(0.46, 0.54)
    a, b = w * rng.uniform(0.34, 0.45), h * rng.uniform(0.36, 0.46)
    th = rng.uniform(-0.3, 0.3)
    u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / a
    v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / b
    r, phi = np.hypot(u, v), np.arctan2(v, u)
    weighting = str(rng.choice(["t1", "t2", "flair"]))
    level = {"t1": dict(scalp=210, skull=25, csf=30, gm=105, wm=150),
             "t2": dict(scalp=150, skull=20, csf=225, gm=125, wm=85),
             "flair": dict(scalp=170, skull=20, csf=25, gm=135, wm=105)}[weighting]
    level = {k: val * rng.uniform(0.85, 1.15) for k, val in level.items()}
    ring = rng.uniform(0.06, 0.10)
    img = np.zeros((h, w), np.float32)
    img[r < 1.0] = level["scalp"]
    img[r < 1.0 - ring * 0.45] = level["skull"]
    brain = r < 1.0 - ring
    img[brain] = level["csf"]
    k, ph = int(rng.integers(7, 13)), rng.uniform(0, 2 * np.pi)
    cortex = r < (1.0 - ring - 0.03) * (1.0 + 0.025 * np.sin(k * phi + ph))
    img[cortex] = level["gm"]
    wm = r < (0.74 + rng.uniform(-0.06, 0.04)) * (1.0 + 0.07 * np.sin(k * phi + ph + 0.5)
                                                   + 0.04 * np.sin(2 * k * phi))
    img[wm & cortex] = level["wm"]
    # lateral ventricles (two ellipses, closer at the front: anterior is up) and the interhemispheric fissure
    vs, vt = rng.uniform(0.7, 1.3), -rng.uniform(0.15, 0.35)
    for side in (-1.0, 1.0):
        du, dv = u - side * 0.11 * vs, v + 0.04
        q = ((du * np.cos(side * vt) + dv * np.sin(side * vt)) / (0.055 * vs)) ** 2 + \
            ((-du * np.sin(side * vt) + dv * np.cos(side * vt)) / (0.24 * vs)) ** 2
        img[(q < 1.0) & cortex] = level["csf"]
    img[(np.abs(u) < 0.012 * (1 + vs)) & (np.abs(v + 0.55) < 0.3) & brain] = level["csf"]
    field = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 2.5)
    img += np.where(brain, 45.0 * field, 0.0)

    kind = str(rng.choice(["glioma", "meningioma", "pituitary"])) if finding == "tumour" else finding
    if kind:
        if kind == "pituitary":
            tu, tv, rad = rng.uniform(-0.06, 0.06), rng.uniform(0.42, 0.55), rng.uniform(0.08, 0.13)
        elif kind == "meningioma":
            ang = rng.uniform(0, 2 * np.pi)
            rad = rng.uniform(0.13, 0.22)
            tu, tv = (0.93 - ring - rad) * np.cos(ang), (0.93 - ring - rad) * np.sin(ang)
        else:
            ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.5)
            tu, tv, rad = dist * np.cos(ang), dist * np.sin(ang), rng.uniform(0.14, 0.26)
        lobes = 1.0 + 0.18 * np.sin(int(rng.integers(2, 5)) * np.arctan2(v - tv, u - tu) + rng.uniform(0, 6.3))
        q = np.hypot((u - tu) / rng.uniform(0.8, 1.2), v - tv) / (rad * lobes)
        bright = {"t1": 235.0, "t2": 240.0, "flair": 230.0}[weighting]
        if kind == "glioma":  # oedema (bright in T2/FLAIR, darker in T1), an enhancing rim, a solid or necrotic core
            oedema = level["wm"] * 0.8 if weighting == "t1" else 0.75 * bright
            img = np.where((q < 1.7) & cortex, oedema, img)
            img = np.where(q < 1.0, 0.95 * bright, img)
            img = np.where(q < 0.7, bright * (0.8 if rng.random() < 0.5 else 0.3), img)
        else:
            img = np.where(q < 1.0, bright * rng.uniform(0.85, 1.0), img)
    img = ndimage.gaussian_filter(img, 0.7) + rng.normal(0.0, 3.0, (h, w)).astype(np.float32)
    return _to_u8(img)


def _oct_bscan(cls: str, width: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [496, width]: a Spectralis-like OCT B-scan: dark speckled vitreous, a retina band of alternating bright
    and dark layers (NFL, plexiform and nuclear layers, IS/OS, RPE) with a foveal pit, a fading choroid; NORMAL as
    is, CNV a raised irregular RPE with subretinal fluid, DME intraretinal cysts in a thickened retina, DRUSEN small
    RPE domes. Some scans have the white wedge of the registration fill at the top, as the real ones."""
    h = OCT_HEIGHT
    x = np.arange(width, dtype=np.float32)
    y = np.arange(h, dtype=np.float32)[:, None]
    xf = width * rng.uniform(0.4, 0.6)
    sw = width * rng.uniform(0.05, 0.08)
    bump = np.exp(-0.5 * ((x - xf) / sw) ** 2)
    base = h * rng.uniform(0.38, 0.5) + rng.uniform(-0.08, 0.08) * (x - width / 2) \
        + rng.uniform(-1.0, 1.0) * 1e-4 * (x - width / 2) ** 2
    pit = rng.uniform(18, 28) * bump
    if cls == "DME":  # the oedematous retina bulges inwards (up) instead of dipping at the fovea
        pit = -rng.uniform(20, 40) * np.exp(-0.5 * ((x - xf) / (1.5 * sw)) ** 2)
    rpe = base + rng.uniform(62, 78)
    ilm = base + pit
    if cls == "CNV":
        at, wide = xf + rng.uniform(-20, 20), sw * rng.uniform(0.8, 1.4)
        hump = rng.uniform(30, 55) * np.exp(-0.5 * ((x - at) / wide) ** 2)
        hump *= 1.0 + 0.15 * np.sin(x / rng.uniform(4, 8))
        rpe = rpe - hump
        ilm = ilm - 0.6 * hump - 0.3 * pit
    if cls == "DRUSEN":
        for _ in range(int(rng.integers(3, 7))):
            c, wd = rng.uniform(0.2, 0.8) * width, rng.uniform(10, 22)
            rpe = rpe - rng.uniform(6, 14) * np.exp(-0.5 * ((x - c) / wd) ** 2)
    s = (y - ilm) / np.maximum(rpe - ilm, 8.0)  # 0 at the inner surface, 1 at the RPE
    stops = np.array([0.0, 0.1, 0.35, 0.45, 0.52, 0.8, 0.86, 0.92, 1.0])
    vals = np.array([170, 115, 70, 125, 55, 175, 80, 235, 235], np.float32) * rng.uniform(0.85, 1.1)
    img = np.interp(s, stops, vals).astype(np.float32)
    img = np.where(s < 0.0, 12.0, img)
    below = y - rpe
    choroid = 150.0 * np.exp(-np.maximum(below, 0.0) / rng.uniform(35, 55))
    choroid *= 1.0 + 0.35 * ndimage.gaussian_filter1d(rng.standard_normal(width).astype(np.float32), 3.0)[None, :]
    img = np.where(s > 1.0, choroid + 10.0, img)
    if cls == "CNV":  # dark subretinal fluid above the hump
        fluid = (s > 0.7) & (s < 0.9) & (bump[None, :] > 0.35)
        img = np.where(fluid, 25.0, img)
    if cls == "DME":
        for _ in range(int(rng.integers(3, 8))):
            c, sd = xf + rng.normal(0.0, sw), rng.uniform(0.4, 0.72)
            a, b = rng.uniform(6, 18), rng.uniform(0.05, 0.1)
            img = np.where(((x - c) / a) ** 2 + ((s - sd) / b) ** 2 < 1.0, 22.0, img)
    speckle = rng.gamma(4.0, 1.0 / 4.0, (h, width)).astype(np.float32)
    img = ndimage.gaussian_filter(img * speckle, (0.9, 1.4)) + rng.normal(0.0, 3.0, (h, width)).astype(np.float32)
    if rng.random() < 0.35:
        edge = rng.uniform(0.02, 0.12) * h + rng.uniform(-0.06, 0.06) * x
        img = np.where(y < edge, 255.0, img)
    return _to_u8(img)


def _disc(weight: np.ndarray, cy: float, cx: float, ry: float, rx: float, soft: float = 1.0) -> None:
    """Raise ``weight`` [H, W] to a soft ellipse's (1 inside, a ``soft``-pixel ramp at the border) around (cy, cx),
    in place, over the ellipse's bounding box only."""
    h, w = weight.shape
    y0, y1 = max(0, int(cy - ry - soft - 1)), min(h, int(cy + ry + soft + 2))
    x0, x1 = max(0, int(cx - rx - soft - 1)), min(w, int(cx + rx + soft + 2))
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    d = np.hypot((yy - cy) / ry, (xx - cx) / rx) - 1.0
    np.maximum(weight[y0:y1, x0:x1], np.clip(0.5 - d * min(ry, rx) / soft, 0.0, 1.0), out=weight[y0:y1, x0:x1])


def _fundus(lesions: tuple[str, ...], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(uint8 RGB [H, W, 3], {type: uint8 {0, 1} mask}) on :data:`IDRID_SHAPE`: a fundus photograph phantom: an
    orange-red field of view clipped at top and bottom, vignetted, with an optic disc on the nasal side, a darker
    macula, branching vessels; ``lesions`` painted with masks (MA dark dots, HE dark red blotches, EX bright yellow
    clusters around the macula, SE pale fuzzy patches; OD: the optic disc mask)."""
    from PIL import Image, ImageDraw

    h, w = IDRID_SHAPE
    yy, xx = np.mgrid[:h, :w].astype(np.float32) + 0.5
    cx, cy, R = w * rng.uniform(0.45, 0.5), h * rng.uniform(0.48, 0.52), h * rng.uniform(0.58, 0.62)
    dist = np.hypot(xx - cx, yy - cy)
    fov = dist < R
    side = 1.0 if rng.random() < 0.5 else -1.0  # optic disc right (left eye) or left (right eye) of the centre
    ody, odx = cy + rng.uniform(-0.1, 0.1) * R, cx + side * rng.uniform(0.55, 0.66) * R
    odr = h * rng.uniform(0.06, 0.07)
    fvy, fvx = cy + rng.uniform(-0.05, 0.05) * R, odx - side * 5.0 * odr
    colour = np.array([rng.uniform(165, 195), rng.uniform(75, 100), rng.uniform(20, 38)], np.float32)
    shade = (1.0 - 0.35 * (dist / R) ** 2) * (1.0 + 0.07 * ndimage.gaussian_filter(
        rng.standard_normal((h, w)).astype(np.float32), 12.0) * 12.0)
    shade *= 1.0 - 0.3 * np.exp(-0.5 * (np.hypot(yy - fvy, xx - fvx) / (2.2 * odr)) ** 2)
    img = shade[..., None] * colour
    od = np.zeros((h, w), np.float32)
    _disc(od, ody, odx, odr * rng.uniform(1.0, 1.12), odr, 2.0)
    img = img * (1 - od[..., None]) + od[..., None] * np.array([245, 195, 120], np.float32)
    # vessels, drawn at 2× and shrunk (smooth edges): four arcades out of the disc, the temporal pair bending around
    # the macula, the nasal pair short; side branches turn away from the macula
    canvas = Image.new("L", (2 * w, 2 * h), 0)
    draw = ImageDraw.Draw(canvas)
    to_fovea = float(np.arctan2(fvy - ody, fvx - odx))

    def vessel(px: float, py: float, ang: float, turn: float, steps: int, width: float, branches: bool) -> None:
        for k in range(steps):
            ang += turn + rng.normal(0.0, 0.06)
            nx, ny = px + 6.0 * np.cos(ang), py + 6.0 * np.sin(ang)
            draw.line([(2 * px, 2 * py), (2 * nx, 2 * ny)], fill=255, width=max(1, int(round(2 * width))))
            px, py, width = nx, ny, max(0.8, width * 0.985)
            if np.hypot(px - cx, py - cy) > R:
                return
            if branches and k > 3 and rng.random() < 0.12:
                fovea = np.arctan2(fvy - py, fvx - px)
                away = 1.0 if np.cos(ang + 0.7 - fovea) < np.cos(ang - 0.7 - fovea) else -1.0  # the side off the macula
                vessel(px, py, ang + away * rng.uniform(0.5, 0.9), rng.normal(0.0, 0.02),
                       int(rng.integers(6, 14)), width * 0.6, False)

    for sgn in (-1.0, 1.0):  # superior / inferior
        vessel(odx, ody, to_fovea + sgn * rng.uniform(1.0, 1.3), -sgn * rng.uniform(0.035, 0.05),
               int(rng.integers(40, 55)), rng.uniform(2.2, 2.8), True)
        vessel(odx, ody, to_fovea + np.pi - sgn * rng.uniform(0.4, 0.8), sgn * rng.uniform(0.0, 0.03),
               int(rng.integers(12, 22)), rng.uniform(1.6, 2.0), True)
    vessel = np.asarray(canvas.resize((w, h), Image.Resampling.BOX), np.float32) / 255.0
    img = img * (1.0 - vessel[..., None] * np.array([0.3, 0.55, 0.5], np.float32))

    masks: dict[str, np.ndarray] = {}
    if "OD" in lesions:
        masks["OD"] = (od >= 0.5).astype(np.uint8)
    inside = (dist < 0.88 * R) & (od < 0.01)
    cand = np.argwhere(inside)
    paint = {"MA": (np.array([95, 25, 20], np.float32), (12, 26), (1.0, 1.8), 0.6),
             "HE": (np.array([110, 30, 25], np.float32), (3, 8), (3.0, 7.0), 1.0),
             "EX": (np.array([250, 215, 80], np.float32), (4, 8), (1.0, 3.2), 0.8),
             "SE": (np.array([235, 205, 165], np.float32), (1, 3), (6.0, 10.0), 3.0)}
    for t in ("MA", "HE", "EX", "SE"):
        if t not in lesions:
            continue
        rgb, (n_lo, n_hi), (r_lo, r_hi), soft = paint[t]
        weight = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(n_lo, n_hi + 1))):
            if t == "EX":  # a cluster around the macula
                ang, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 3.5) * odr
                ccy, ccx = fvy + rr * np.sin(ang), fvx + rr * np.cos(ang)
                spots = [(ccy + rng.normal(0, 5), ccx + rng.normal(0, 5)) for _ in range(int(rng.integers(3, 9)))]
            else:
                spots = [tuple(cand[rng.integers(len(cand))].astype(np.float32) + 0.5)]
            for sy, sx in spots:
                rad = rng.uniform(r_lo, r_hi)
                _disc(weight, sy, sx, rad * rng.uniform(0.7, 1.3), rad, soft)
        weight *= inside
        img = img * (1.0 - weight[..., None]) + weight[..., None] * rgb
        masks[t] = (weight >= 0.5).astype(np.uint8)
        if not masks[t].any():
            raise ValueError(f"miniature: a fundus phantom's {t} lesions fell outside the field of view")
    img = img + rng.normal(0.0, 2.0, img.shape).astype(np.float32)
    img = np.where(fov[..., None], img, rng.uniform(0.0, 3.0, img.shape).astype(np.float32))
    return _to_u8(img), {t: masks[t] for t in lesions}


def _tif_1bit(mask: np.ndarray) -> bytes:
    """A {0, 1} mask as IDRiD ships its lesion masks: 1-bit palette TIFF (index 0 black, 1 red), Deflate (zlib level
    9) in 64-row strips, the strips first and then the 11 baseline tags (reproduces the real files byte for byte)."""
    import struct

    h, w = mask.shape
    rows = 64
    packed = np.packbits(mask.astype(bool), axis=1)
    strips = [zlib.compress(packed[r:r + rows].tobytes(), 9) for r in range(0, h, rows)]
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    offsets = []
    for s in strips:
        offsets.append(len(out))
        out += s
    if len(out) % 2:
        out += b"\x00"
    ifd = len(out)
    n_tags = 11
    extra_at = ifd + 2 + 12 * n_tags + 4
    extra = bytearray()

    def out_of_line(data: bytes) -> int:
        at = extra_at + len(extra)
        extra.extend(data)
        if len(extra) % 2:
            extra.append(0)
        return at

    def longs(vals: list[int]) -> tuple[int, int, int]:
        return (4, 1, vals[0]) if len(vals) == 1 else (4, len(vals), out_of_line(struct.pack(f"<{len(vals)}I", *vals)))

    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 1), (259, 3, 1, 8), (262, 3, 1, 3), (273, *longs(offsets)),
            (277, 3, 1, 1), (278, 4, 1, rows), (279, *longs([len(s) for s in strips])), (284, 3, 1, 1),
            (320, 3, 6, out_of_line(struct.pack("<6H", 0, 65535, 0, 0, 0, 0)))]
    struct.pack_into("<I", out, 4, ifd)
    out += struct.pack("<H", n_tags)
    for tag, typ, count, value in tags:
        out += struct.pack("<HHIHH", tag, typ, count, value, 0) if typ == 3 and count == 1 else \
            struct.pack("<HHII", tag, typ, count, value)
    out += struct.pack("<I", 0) + extra
    return bytes(out)


def write_kaggle_brain_release(root: Path, *, seed: int = 0) -> dict:
    """The two Kaggle brain-tumour sets under their folders of :data:`PROXYANO_DIRS` (files of
    :data:`PROXYANO_BRAIN`, the planted :data:`PROXYANO_BRAIN_DUPLICATE`); every other pair of images at least
    ``_PHASH_APART`` pHash bits apart (a draw too close to an earlier image is redrawn). Returns the summary part."""
    from PIL import Image

    from datasets.images import read_grey
    from datasets.splits import phash

    root = Path(root)
    source, copy = PROXYANO_BRAIN_DUPLICATE
    hashes: dict[str, int] = {}
    files: dict[str, list] = {}
    for f in PROXYANO_BRAIN:
        if f.rel == copy:
            continue
        for attempt in range(20):
            img = _brain_mri(f.finding, _rng(seed, f"Kaggle/{f.rel}/{attempt}"))
            _save_image(root / f.rel, img, f.fmt, f.mode)
            hv = phash(root / f.rel)
            if all(int(np.bitwise_count(np.uint64(hv ^ o))) >= _PHASH_APART for o in hashes.values()):
                break
        else:
            raise ValueError(f"miniature: no brain image {f.rel} {_PHASH_APART} pHash bits away from the others")
        hashes[f.rel] = hv
        files[f.rel] = [f.fmt, f.mode, *img.shape]
    dup = next(f for f in PROXYANO_BRAIN if f.rel == copy)
    grey = read_grey(root / source, colour="convert").astype(np.uint8)
    big = Image.fromarray(grey).resize((round(grey.shape[1] * 1.2), round(grey.shape[0] * 1.2)),
                                       Image.Resampling.BILINEAR)
    _save_image(root / copy, np.asarray(big), dup.fmt, dup.mode, quality=80)
    dist = int(np.bitwise_count(np.uint64(phash(root / copy) ^ hashes[source])))
    if dist > 2:
        raise ValueError(f"miniature: the planted duplicate is {dist} pHash bits from its source (want ≤ 2)")
    files[copy] = [dup.fmt, dup.mode, big.height, big.width]
    normals = [f.rel for f in PROXYANO_BRAIN if not f.finding]
    return {"files": files, "normals": len(normals) - 1, "abnormals": len(PROXYANO_BRAIN) - len(normals),
            "duplicate": {"source": source, "copy": copy, "subject_ids": [kaggle_subject_id(p) for p in (source, copy)],
                          "phash_bits": dist},
            "phash_min_bits_apart": min(int(np.bitwise_count(np.uint64(a ^ b)))
                                        for i, a in enumerate(hashes.values()) for b in list(hashes.values())[i + 1:])}


def write_oct2017_release(root: Path, *, seed: int = 0) -> dict:
    """OCT2017 as the Kaggle mirror ships it (``OCT2017/{train,test,val}/<CLASS>/<CLASS>-<patient>-<n>.jpeg``, grey
    JPEG, 496 px high, 512 or 768 wide), the files of :data:`PROXYANO_OCT`. Returns the summary part."""
    widths: dict[str, int] = {}
    for split, classes in PROXYANO_OCT.items():
        for cls, names in classes.items():
            for name in names:
                rel = f"{PROXYANO_DIRS['oct2017']}/{split}/{cls}/{name}.jpeg"
                rng = _rng(seed, f"OCT2017/{rel}")
                width = OCT_WIDTHS[1] if rng.random() < 0.2 else OCT_WIDTHS[0]
                _save_image(Path(root) / rel, _oct_bscan(cls, width, rng), "JPEG", "L", quality=70)
                widths[rel] = width
    return {"counts": {split: {cls: len(n) for cls, n in classes.items()} for split, classes in PROXYANO_OCT.items()},
            "widths": widths}


def _grading_csv(split: str) -> str:
    """A grading CSV as IDRiD ships it (CRLF; the training one with nine trailing empty columns), the rows of the
    images written."""
    tail = "," * 9 if split == "train" else ""
    rows = ["Image name,Retinopathy grade,Risk of macular edema" + tail]
    rows += [f"{img},{g},{m}{tail}" for img, (g, m) in PROXYANO_IDRID_B[split].items()]
    return "".join(r + "\r\n" for r in rows)


def write_idrid_release(root: Path, *, seed: int = 0) -> dict:
    """IDRiD in the release's folders (``idrid/A. Segmentation/…``, ``idrid/B. Disease Grading/…``), the images of
    :data:`PROXYANO_IDRID_A` (with their masks, :func:`idrid_paths`) and :data:`PROXYANO_IDRID_B` (grades in the
    two CSVs; DR grade > 0 images show lesions, unmasked as in part B). Returns the summary part."""
    root = Path(root)
    lesion: dict[str, dict[str, int]] = {}
    for split, images in PROXYANO_IDRID_A.items():
        for image, types in images.items():
            paths = idrid_paths("A", split, image)
            rgb, masks = _fundus(types, _rng(seed, f"IDRiD/A/{image}"))
            _save_image(root / paths["image"], None, "JPEG", "RGB", rgb=rgb, quality=85)
            for t, m in masks.items():
                (root / paths[t]).parent.mkdir(parents=True, exist_ok=True)
                (root / paths[t]).write_bytes(_tif_1bit(m))
            lesion[image] = {t: int(m.sum()) for t, m in masks.items()}
    for split, images in PROXYANO_IDRID_B.items():
        for image, (grade, _) in images.items():
            shown = () if grade == 0 else ("MA", "HE", "EX") if grade < 3 else ("MA", "HE", "EX", "SE")
            rgb, _ = _fundus(shown, _rng(seed, f"IDRiD/B/{split}/{image}"))
            _save_image(root / idrid_paths("B", split, image)["image"], None, "JPEG", "RGB", rgb=rgb, quality=85)
    truths = root / PROXYANO_DIRS["idrid"] / "B. Disease Grading" / "2. Groundtruths"
    truths.mkdir(parents=True, exist_ok=True)
    for split, name in IDRID_CSV.items():
        (truths / name).write_bytes(_grading_csv(split).encode())
    return {"shape": list(IDRID_SHAPE), "part_a": {split: {i: list(t) for i, t in images.items()}
                                                    for split, images in PROXYANO_IDRID_A.items()},
            "lesion_pixels": lesion,
            "part_b": {split: {i: {"grade": g, "macular_edema": m} for i, (g, m) in images.items()}
                       for split, images in PROXYANO_IDRID_B.items()},
            "grade0_train": [i for i, (g, _) in PROXYANO_IDRID_B["train"].items() if g == 0]}


def write_proxyano_release(root: Path, *, seed: int = 0) -> dict:
    """Write ProxyAno's miniature into ``root``: the two Kaggle brain sets (:func:`write_kaggle_brain_release`),
    OCT2017 (:func:`write_oct2017_release`) and IDRiD (:func:`write_idrid_release`), each under its folder of
    :data:`PROXYANO_DIRS`; every setup of :data:`PROXYANO_SETUPS` prepares from ``root`` itself
    (:func:`proxyano_roots`). Returns the summary also written to ``root/miniature.json``."""
    root = Path(root)
    summary = {"release": "proxyano", "version": release_version("proxyano"), "seed": seed,
               "folders": dict(PROXYANO_DIRS), "setup_roots": {sid: "." for sid in PROXYANO_SETUPS},
               "brain": write_kaggle_brain_release(root, seed=seed), "oct2017": write_oct2017_release(root, seed=seed),
               "idrid": write_idrid_release(root, seed=seed)}
    (root / "miniature.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


RELEASES: dict[str, Callable[[Path], dict]] = {"ra": write_ra_release, "phanes": write_phanes_release,
                                              "itermask2": write_itermask2_release, "afsc": write_afsc_release,
                                              "proxyano": write_proxyano_release}


def release_version(name: str) -> str:
    """The version in release ``name``'s folder name: ``MINIATURE_VERSION`` for ``ra``; ``phanes`` holds RA's files
    and its own, so ``<MINIATURE_VERSION>.<ATLAS_VERSION>``: a change to either rebuilds it."""
    return {"phanes": f"{MINIATURE_VERSION}.{ATLAS_VERSION}", "itermask2": str(BRATS_VERSION),
            "afsc": str(AFSC_VERSION), "proxyano": str(PROXYANO_VERSION)}.get(name, str(MINIATURE_VERSION))


def miniature_root(name: str, cache_dir: Path | None = None) -> Path:
    """The folder of miniature release ``name``, built once into ``<cache>/miniature/<name>-v<version>``
    (:func:`release_version`: ``ra-v1``, ``phanes-v1.1``).

    ``cache_dir`` defaults to ``datasets.base.DEFAULT_CACHE`` ($PHBENCH_CACHE). The folder is built under a
    temporary name and renamed into place (``atomic_dir``), under a file lock beside it, so concurrent
    callers build it once and nobody sees a half-written release.
    """
    from filelock import FileLock

    from datasets import base

    if name not in RELEASES:
        raise KeyError(f"unknown miniature release {name!r}; known: {', '.join(sorted(RELEASES))}")
    out = (Path(cache_dir) if cache_dir is not None else base.DEFAULT_CACHE) / "miniature" / \
        f"{name}-v{release_version(name)}"
    if out.is_dir():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{out.name}.lock")):
        if not out.is_dir():  # another process may have finished it while we waited
            with atomic_dir(out) as tmp:
                RELEASES[name](tmp)
    return out
