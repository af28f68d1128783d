"""HCP Young Adult structural preprocessed package: brain-extracted T1w/T2w of healthy adults.

AFSC trains on the HCP T2w (S500, 526 subjects). The minimally pre-processed ``MNINonLinear`` volumes
are used by default (0.7 mm; recipes resample to 1 mm to match BraTS / ISBI).
"""

from __future__ import annotations

from pathlib import Path

from benchmark.registry import register_dataset
from datasets.adapters._common import check_same_grid, modality_channels, natural_key, nifti_spacing, require_dir
from datasets.base import DatasetAdapter, Subject, Volume

FILES = {
    "mni": {"t1": "MNINonLinear/T1w_restore_brain.nii.gz", "t2": "MNINonLinear/T2w_restore_brain.nii.gz"},
    "acpc": {"t1": "T1w/T1w_acpc_dc_restore_brain.nii.gz", "t2": "T1w/T2w_acpc_dc_restore_brain.nii.gz"},
}


@register_dataset
class HCPAdapter(DatasetAdapter):
    """HCP subjects ``<root>/<id>/MNINonLinear/T{1,2}w_restore_brain.nii.gz`` (``space='acpc'``: T1w/ folder)."""

    name = "hcp"
    title = "Human Connectome Project Young Adult (S500/S1200), structural preprocessed, T1w/T2w"
    url = "https://db.humanconnectome.org (ConnectomeDB; data use terms required)"
    layout = ("<root>/<subject id>/MNINonLinear/{T1w,T2w}_restore_brain.nii.gz (space='acpc': "
              "<root>/<subject id>/T1w/{T1w,T2w}_acpc_dc_restore_brain.nii.gz)")
    default_recipe = "afsc_t2_brain"

    def __init__(self, root: str | Path, *, space: str = "mni"):
        super().__init__(root)
        if space not in FILES:
            raise ValueError(f"space must be one of {sorted(FILES)}, not {space!r}")
        self.space = space

    def subjects(self) -> list[Subject]:
        root = require_dir(self.root, self.name, self.layout)
        rels = FILES[self.space]
        anchor = Path(rels["t1"]).parts[0]
        out = []
        # subject folders sit directly under root, or one level deeper (e.g. <root>/<id>_3T_Structural_preproc/<id>/)
        for sub in sorted({p.parent for p in list(root.glob(f"*/{anchor}")) + list(root.glob(f"*/*/{anchor}"))},
                          key=lambda p: natural_key(p.name)):
            files = {m: sub / rel for m, rel in rels.items() if (sub / rel).is_file()}
            if not files:
                continue
            out.append(Subject(id=sub.name, files=files, split="all", pathology="healthy",
                               meta={"folder": str(sub), "space": self.space}))
        return out

    def load(self, subject: Subject) -> Volume:
        check_same_grid(subject.files)
        folder = Path(subject.meta["folder"])

        channels = modality_channels(subject.files, ("t1", "t2"), lambda m: folder / FILES[self.space][m])
        ref = next(iter(subject.files.values()))
        return Volume(channels=channels, lesion=None,
                      spacing=nifti_spacing(ref), source=str(folder))
