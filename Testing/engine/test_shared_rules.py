"""One rule for each thing, across the engine, the Slicer module and training: each constant name means one
value, the CT/PET overlap rule, and the SUV plausibility limit on the true maximum.

(That the module and the console accept and refuse the same PETs and pairs is tested on real MRML nodes in
Testing/slicer/test_inputs.py; that training reads and checks with the engine's reader and rule in
Testing/training/test_data_validation.py.)
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from VeloxSegSlicerLib.engine.errors import InputError
from VeloxSegSlicerLib.engine.inference import preprocess
from VeloxSegSlicerLib.engine.inputs import checks

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("VeloxSegSlicer", "Training/veloxseg_train", "scripts", "benchmarks")


def _module_constants(path: Path):
    """(NAME, value) of the module-level UPPER_CASE assignments of a literal number in one file."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
            continue
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
            if isinstance(target, ast.Name) and target.id.isupper():
                yield target.id, float(value)


def test_each_constant_name_has_one_value():
    """`CT_AIR_HU` was -1000 (air's value) in preprocess and -500 (an air threshold) in checks: a reader of
    one file assumed the other's meaning. A name now means one value wherever it is defined."""
    values = defaultdict(dict)
    for folder in SOURCES:
        for path in sorted((REPO / folder).rglob("*.py")):
            for name, value in _module_constants(path):
                values[name][str(path.relative_to(REPO))] = value
    assert len(values) > 50  # the scan found the constants
    clashes = {name: where for name, where in values.items() if len(set(where.values())) > 1}
    assert not clashes, f"one name, several values: {clashes}"


def test_air_value_and_air_threshold_have_their_own_names():
    assert preprocess.CT_AIR_HU == -1000.0  # what the CT holds outside its field of view
    assert checks.CT_AIR_THRESHOLD_HU == -500.0  # at or below: air, for the is-this-a-CT check
    assert not hasattr(checks, "CT_AIR_HU")


def _image(array, origin=(0.0, 0.0, 0.0), spacing=(4.0, 4.0, 4.0)):
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    return image


@pytest.mark.parametrize("shift_voxels, refused", [(0, False), (23, False), (24, True), (30, True)])
def test_overlap_rule_is_one_fraction_and_one_threshold(shift_voxels, refused):
    """PET voxel centres z 0-116 mm (30 slices), the CT's `shift` slices further: 6/29 = 20.7 % (23) or
    5/29 = 17.2 % (24) of the PET inside; the engine's model grid refuses below MIN_PET_IN_CT_FRACTION."""
    ct = _image(np.full((30, 20, 20), -1000, np.int16), origin=(0.0, 0.0, 4.0 * shift_voxels))
    pet = _image(np.ones((30, 20, 20), np.float32))
    fraction = checks.pet_in_ct_fraction(preprocess.field_of_view(ct), preprocess.field_of_view(pet))
    assert fraction == pytest.approx(max(29 - shift_voxels, 0) / 29)
    assert (fraction < checks.MIN_PET_IN_CT_FRACTION) == refused
    if refused:
        with pytest.raises(InputError, match="do not overlap"):
            preprocess.model_grid(ct, pet, (4.0, 4.0, 4.0), (8, 8, 8))
    else:
        preprocess.model_grid(ct, pet, (4.0, 4.0, 4.0), (8, 8, 8))


def test_suv_limit_applies_to_the_true_maximum_not_a_sample():
    """The content checks subsample large volumes; the peak must not be sampled away, or the console would
    run a PET that the module's button (which sees the whole value range) refuses."""
    array = np.full((140, 120, 130), 1.0, np.float32)  # 2.2 M voxels: the checks sample every second voxel
    array.reshape(-1)[1] = 2 * checks.SUV_MAX_LIMIT  # an odd index, outside that sample
    assert array.size // checks.SAMPLE_SIZE >= 2
    with pytest.raises(InputError, match="does not look like SUV"):
        checks.check_pet(_image(array))
    array.reshape(-1)[1] = checks.SUV_MAX_LIMIT  # at the limit: still SUV
    checks.check_pet(_image(array))
