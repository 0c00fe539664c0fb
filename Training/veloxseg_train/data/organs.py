"""The organ classes the network learns beside the lesion class (issue 19: anatomy as a training target).

One list, one code per class: the phantom generator writes `organs.nii.gz` with these codes, `prepare`
carries them into the training arrays, the model's organ head predicts them, and the engine names a
lesion's site from them (the names travel in the model manifest, so the engine needs no copy).

Code 0 is everything else (air, fat, skin, the couch, glands without a class of their own); lesion voxels
keep the code of the organ they grow in, so the organ under a liver lesion is "liver" and a lymph-node
lesion sits on 0 ("lymph node / soft tissue" as a site).
"""

from __future__ import annotations

from typing import Dict, Tuple

from .phantom_canvas import (
    BLOOD,
    BONE,
    BOWEL,
    BRAIN,
    BRAIN_WM,
    BROWN_FAT,
    DISC,
    KIDNEY,
    LIVER,
    LUNG,
    LYMPHOID,
    MARROW,
    MUSCLE,
    MYOCARDIUM,
    SALIVARY,
    SPLEEN,
    STOMACH,
    THYROID,
    URINE,
    YELLOW_MARROW,
)

ORGAN_NAMES: Tuple[str, ...] = (
    "other", "brain", "salivary_tonsils", "thyroid", "myocardium", "blood_pool", "lung", "liver", "spleen",
    "kidney", "ureter", "bladder", "bowel_stomach", "bone_marrow", "muscle", "brown_fat",
)
ORGAN = {name: code for code, name in enumerate(ORGAN_NAMES)}
IGNORE = 255  # "no organ labels" in a training target (the IBSI studies): the organ loss skips it

# The organ a tissue belongs to when painted without an explicit organ. Tissues shared by several organs
# (urine, fluid, gas) are painted with `organ=` at the call site: renal pelvis, bladder, gallbladder, bowel gas.
TISSUE_ORGAN: Dict[int, int] = {
    BRAIN: ORGAN["brain"], BRAIN_WM: ORGAN["brain"], SALIVARY: ORGAN["salivary_tonsils"],
    LYMPHOID: ORGAN["salivary_tonsils"], THYROID: ORGAN["thyroid"], MYOCARDIUM: ORGAN["myocardium"],
    BLOOD: ORGAN["blood_pool"], LUNG: ORGAN["lung"], LIVER: ORGAN["liver"], SPLEEN: ORGAN["spleen"],
    KIDNEY: ORGAN["kidney"], URINE: ORGAN["bladder"], BOWEL: ORGAN["bowel_stomach"],
    STOMACH: ORGAN["bowel_stomach"], BONE: ORGAN["bone_marrow"], MARROW: ORGAN["bone_marrow"],
    YELLOW_MARROW: ORGAN["bone_marrow"], DISC: ORGAN["bone_marrow"], MUSCLE: ORGAN["muscle"],
    BROWN_FAT: ORGAN["brown_fat"],
}

# What a lesion table calls the site of a lesion lying on each organ class.
SITE_NAMES: Dict[str, str] = {
    "other": "lymph node / soft tissue", "brain": "brain", "salivary_tonsils": "head and neck",
    "thyroid": "thyroid", "myocardium": "heart", "blood_pool": "mediastinum / vessels", "lung": "lung",
    "liver": "liver", "spleen": "spleen", "kidney": "kidney", "ureter": "ureter", "bladder": "bladder",
    "bowel_stomach": "bowel / stomach", "bone_marrow": "bone", "muscle": "muscle / soft tissue",
    "brown_fat": "brown fat",
}
