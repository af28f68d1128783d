"""ATLAS v2.0 (R2.0) chronic stroke T1w in its BIDS layout, MNI152NLin2009aSym, with lesion masks.

The release is **not** skull-stripped. A brain mask produced by the user (any tool, saved beside the
T1w as ``…_desc-brain_mask.nii.gz``) is used when present; otherwise recipes fall back to a head
(foreground) mask and ``meta['skull_stripped']`` says so.
"""

from __future__ import annotations

import re
from benchmark.registry import register_dataset
from datasets.adapters._common import (LazyChannels, check_same_grid, natural_key, nifti_spacing, read_image,
                                       read_labels, require_dir)
from datasets.base import DatasetAdapter, Subject, Volume

_T1 = re.compile(r"^(?P<sub>sub-[A-Za-z0-9]+)_(?P<ses>ses-[A-Za-z0-9]+)_(?P<space>space-[A-Za-z0-9]+)_T1w\.nii(\.gz)?$")


@register_dataset
class Atlas2Adapter(DatasetAdapter):
    """ATLAS R2.0: ``Training/`` cases carry ``label-L_desc-T1lesion_mask``; ``Testing/`` cases have none."""

    name = "atlas2"
    title = "ATLAS v2.0 (Anatomical Tracings of Lesions After Stroke), T1w, 655 labelled training cases"
    url = "https://fcon_1000.projects.nitrc.org/indi/retro/atlas.html (data use agreement required)"
    layout = ("<root>/Training/R<site>/sub-r<site>s<n>/ses-1/anat/sub-…_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz "
              "+ …_label-L_desc-T1lesion_mask.nii.gz (Testing/ without masks); optional user brain mask "
              "…_desc-brain_mask.nii.gz beside the T1w")
    default_recipe = "phanes_atlas_sl95"

    def subjects(self) -> list[Subject]:
        root = require_dir(self.root, self.name, self.layout)
        rows = []
        for p in sorted(root.rglob("sub-*_T1w.nii*")):
            m = _T1.match(p.name)
            if not m:
                continue
            stem = f"{m.group('sub')}_{m.group('ses')}_{m.group('space')}"
            files = {"t1": p}
            ext = ".nii.gz" if p.name.endswith(".gz") else ".nii"
            for role, suffix in (("seg", "_label-L_desc-T1lesion_mask"), ("brainmask", "_desc-brain_mask")):
                q = p.with_name(stem + suffix + ext)
                if q.is_file():
                    files[role] = q
            parts = p.relative_to(root).parts
            part = next((x for x in parts if x.lower() in ("training", "testing")), "")
            site = next((x for x in parts if re.fullmatch(r"R\d+", x)), "")
            rows.append((m.group("sub"), m.group("ses"), files, part, site))
        subs = [r[0] for r in rows]
        out = []
        for sub, ses, files, part, site in sorted(rows, key=lambda r: natural_key(r[0] + r[1])):
            sid = sub if subs.count(sub) == 1 else f"{sub}_{ses}"
            out.append(Subject(id=sid, files=files, split="all", pathology="stroke",
                               meta={"part": part, "site": site, "session": ses,
                                     "skull_stripped": "brainmask" in files, "has_seg": "seg" in files}))
        return out

    def load(self, subject: Subject) -> Volume:
        check_same_grid(subject.files)
        lesion = brain = None
        if "seg" in subject.files:
            lesion = (read_labels(subject.files["seg"], {1: "lesion"}, "ATLAS lesion mask") > 0).astype("uint8")
        if "brainmask" in subject.files:
            brain = read_labels(subject.files["brainmask"], {1: "brain"}, "brain mask") > 0
        t1 = subject.files["t1"]
        return Volume(channels=LazyChannels({"t1": lambda: read_image(t1)}), lesion=lesion, brain=brain,
                      spacing=nifti_spacing(t1), source=str(t1))
