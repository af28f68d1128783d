"""Writers for tiny files in each release's exact published layout (for families with no real sample).

Volumes are small phantoms: an ellipsoid "brain" with a bright or dark lesion, so recipes have brain,
background and lesion voxels to work on. Shapes are tiny to keep the tests fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LPS_1MM = np.diag([-1.0, -1.0, 1.0, 1.0])  # BraTS-like affine (stored L-P-S)


def phantom(shape=(32, 32, 24), lesion_value: float | None = 2.0, seed: int = 0, lesion_z=None, lesion_r2=0.08):
    """(image, lesion mask) float32 / uint8: ellipsoid brain ~100 ± 10, optional lesion ball."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = (x**2 / 0.7 + y**2 / 0.8 + z**2 / 0.9) < 1
    img = np.where(brain, 100 + rng.normal(0, 10, shape), 0).astype(np.float32)
    les = np.zeros(shape, np.uint8)
    if lesion_value is not None:
        cz = 0.0 if lesion_z is None else lesion_z
        les = (((x - 0.2) ** 2 + (y + 0.1) ** 2 + (z - cz) ** 2) < lesion_r2) & brain
        img[les] *= lesion_value
        les = les.astype(np.uint8)
    return img, les


def save_nifti(path: Path, arr: np.ndarray, affine=LPS_1MM, dtype=None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    a = arr if dtype is None else arr.astype(dtype)
    nib.save(nib.Nifti1Image(a, affine), str(path))
    return path


def write_brats(root: Path, case: str, *, naming: str = "2021", shape=(32, 32, 24), labels=(1, 2, 4),
                modalities=None, seg: bool = True, seed: int = 0, lesion_z=None, lesion_r2=0.08,
                ext: str = ".nii.gz", seg_name: str | None = None) -> Path:
    """One case folder: 2017–2021 ``<case>_{flair,t1,t1ce,t2,seg}`` or 2023 ``<case>-{t2f,t1n,t1c,t2w,seg}``.

    ``ext='.nii'``: BraTS 2020 ships uncompressed files; ``seg_name``: a label file off the naming scheme
    (BraTS20_Training_355's ``W39_1998.09.19_Segm.nii``)."""
    folder = root / case
    img, les = phantom(shape, seed=seed, lesion_z=lesion_z, lesion_r2=lesion_r2)
    mods = modalities or (("flair", "t1", "t1ce", "t2") if naming != "2023" else ("t2f", "t1n", "t1c", "t2w"))
    sep = "-" if naming == "2023" else "_"
    for i, m in enumerate(mods):
        save_nifti(folder / f"{case}{sep}{m}{ext}", img * (1 + 0.1 * i), dtype=np.int16)
    if seg:
        lab = np.zeros(shape, np.int16)
        idx = np.flatnonzero(les.ravel())
        for j, v in enumerate(labels):  # split the lesion voxels into the release's label values
            lab.ravel()[idx[j::len(labels)]] = v
        save_nifti(folder / (seg_name or f"{case}{sep}seg{ext}"), lab)
    return folder


def write_msseg(root: Path, patient: int, tp: int, *, shape=(24, 28, 20), raters=(1, 2)) -> Path:
    base = root / "training" / f"training{patient:02d}"
    case = f"training{patient:02d}_{tp:02d}"
    img, les = phantom(shape, seed=patient * 10 + tp)
    for m in ("flair", "mprage", "pd", "t2"):
        save_nifti(base / "preprocessed" / f"{case}_{m}_pp.nii", img, affine=np.eye(4))
    for r in raters:
        mask = les if r == 1 else np.roll(les, 1, axis=0)
        save_nifti(base / "masks" / f"{case}_mask{r}.nii", mask.astype(np.uint8), affine=np.eye(4))
    return base


def write_hcp(root: Path, sid: str, *, shape=(26, 31, 26), spacing=0.7, space: str = "mni",
              package: bool = False) -> Path:
    """``<root>/<id>/MNINonLinear/T{1,2}w_restore_brain.nii.gz`` (``space='acpc'``: ``<id>/T1w/T{1,2}w_acpc_dc_
    restore_brain.nii.gz``); ``package``: unzipped ``<id>_3T_Structural_preproc/<id>/…`` as ConnectomeDB ships it."""
    aff = np.diag([-spacing, spacing, spacing, 1.0])
    img, _ = phantom(shape, lesion_value=None, seed=int(sid) % 1000 if sid.isdigit() else 0)
    base = root / f"{sid}_3T_Structural_preproc" if package else root
    for i, m in enumerate(("T1w", "T2w")):
        rel = (Path("MNINonLinear") / f"{m}_restore_brain.nii.gz" if space == "mni"
               else Path("T1w") / f"{m}_acpc_dc_restore_brain.nii.gz")
        save_nifti(base / sid / rel, img * (1 + i), affine=aff)
    return base / sid


def write_ixi(root: Path, sid: str, site: str, n: int, modalities=("T1", "T2", "PD"), *, folders: bool = True,
              shape=(20, 24, 16)) -> dict[str, Path]:
    """``IXI<id>-<site>-<nnnn>-<MOD>.nii.gz`` in ``IXI-<MOD>/`` (as the per-modality tars unpack) or flat.
    T1 is stored sagittally on its own grid, T2/PD axially on another, like the release."""
    out = {}
    for i, mod in enumerate(modalities):
        img, _ = phantom(shape if mod == "T1" else (shape[0] + 4, shape[1], shape[2] - 2), lesion_value=None, seed=i)
        aff = np.array([[0, 0, 1.2, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]]) if mod == "T1" else \
            np.diag([-0.9, 0.9, 1.2, 1.0])
        folder = root / f"IXI-{mod}" if folders else root
        out[mod] = save_nifti(folder / f"{sid}-{site}-{n:04d}-{mod}.nii.gz", img * (1 + i), affine=aff, dtype=np.int16)
    return out


def write_lgg_patient(root: Path, folder: str, numbers=(1, 2, 3), *, shape=(32, 32), tumour=(2,)) -> Path:
    """``<root>/kaggle_3m/<folder>/<folder>_<n>.tif`` (RGB: pre, FLAIR, post) + ``_<n>_mask.tif`` (0/255);
    slices in ``tumour`` get a mask blob and a bright FLAIR spot."""
    import tifffile

    d = root / "kaggle_3m" / folder
    d.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    head = ((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2) < (min(shape) / 2.4) ** 2
    for n in numbers:
        rgb = np.dstack([np.where(head, 90 + 20 * c + n, 0) for c in range(3)]).astype(np.uint8)
        m = np.zeros(shape, np.uint8)
        if n in tumour:
            m[12:18, 12:20] = 255
            rgb[..., 1][m > 0] = 230
        tifffile.imwrite(d / f"{folder}_{n}.tif", rgb)
        tifffile.imwrite(d / f"{folder}_{n}_mask.tif", m)
    return d


def write_atlas(root: Path, site: str, sub: str, *, part: str = "Training", shape=(30, 34, 28),
                mask: bool = True) -> Path:
    anat = root / part / site / sub / "ses-1" / "anat"
    img, les = phantom(shape, lesion_value=0.3, seed=len(sub))
    img = img + 5.0  # not skull-stripped: background is not zero
    stem = f"{sub}_ses-1_space-MNI152NLin2009aSym"
    save_nifti(anat / f"{stem}_T1w.nii.gz", img, affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    if mask:
        save_nifti(anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz", les, affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    return anat


def write_isles(root: Path, case: int, *, shape=(28, 28, 40), vsd0: int = 70600) -> Path:
    folder = root / "SISS2015_Training" / str(case)
    img, les = phantom(shape, seed=case, lesion_z=0.0)
    for i, m in enumerate(("Flair", "T1", "T2", "DWI")):
        name = f"VSD.Brain.XX.O.MR_{m}.{vsd0 + case * 10 + i}"
        save_nifti(folder / name / f"{name}.nii", img, affine=np.eye(4))
    name = f"VSD.Brain.XX.O.OT.{vsd0 + case * 10 + 9}"
    save_nifti(folder / name / f"{name}.nii", les, affine=np.eye(4))
    return folder


def write_fastmri(root: Path, file_id: str, *, n_slices: int = 6, hw=(40, 40), folder: str = "multicoil_train") -> Path:
    """An h5 with ``reconstruction_rss`` [slices, H, W]: a disc whose *top* rows are brighter, so the
    up-down flip is visible in tests."""
    import h5py

    path = root / folder / f"{file_id}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 2.5) ** 2).astype(np.float32)
    vol = np.stack([disc * (1 + (yy < h / 2)) * (1 + 0.01 * z) for z in range(n_slices)]).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("reconstruction_rss", data=vol)
        f.create_dataset("kspace", data=np.zeros((1, 1, 2, 2), np.complex64))
    return path


def write_fastmri_annotations(root: Path, rows: list[tuple], reviewed: list[str]) -> Path:
    d = root / "Annotations"
    d.mkdir(parents=True, exist_ok=True)
    lines = ["file,slice,study_level,x,y,width,height,label"]
    for r in rows:
        lines.append(",".join("" if v is None else str(v) for v in r))
    (d / "brain.csv").write_text("\n".join(lines) + "\n")
    (d / "brain_file_list.csv").write_text("\n".join(reviewed) + "\n")
    return d / "brain.csv"


def write_image(path: Path, arr: np.ndarray, fmt: str = "JPEG") -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def grey_image(h=48, w=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    return np.clip(80 + 60 * np.sin(xx / 7.0) + rng.normal(0, 5, (h, w)), 0, 255).astype(np.uint8)


def write_oct(root: Path, split: str, cls: str, n: int, *, start: int = 1) -> list[Path]:
    return [write_image(root / "OCT2017" / split / cls / f"{cls}-{1000 + i}-1.jpeg", grey_image(seed=i))
            for i in range(start, start + n)]
