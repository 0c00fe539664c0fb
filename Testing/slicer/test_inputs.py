"""Bad input is refused before anything runs, with a message that says what to do; the scene stays as it was.
Also: which loaded volumes are picked as CT and PET."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from mrml_study import add_study, make_ct, make_pet, scene_snapshot

from VeloxSegSlicerLib import inputs, mrml_io
from VeloxSegSlicerLib.engine import InputError
from VeloxSegSlicerLib.engine.inference import preprocess
from VeloxSegSlicerLib.engine.inputs import checks


def _units(node, code_value, meaning):
    units = slicer.vtkCodedEntry()
    units.SetValueSchemeMeaning(code_value, "UCUM", meaning)
    node.SetVoxelValueUnits(units)


@pytest.fixture
def nodes(app):
    return add_study(mrml_io, make_ct(), make_pet())


def _expect_refused(app, logic, ct, pet, *words, output=None):
    snapshot = scene_snapshot(app.scene)
    with pytest.raises(InputError) as error:
        logic.segment(ct, pet, output)
    message = str(error.value)
    for word in words:
        assert word.lower() in message.lower(), message
    assert scene_snapshot(app.scene) == snapshot
    # the GUI shows the same sentence in the button tooltip, without reading all voxels
    if ct is not None and pet is not None and output is None:
        assert inputs.checkInputs(ct, pet) == message
    return message


def test_no_ct_or_no_pet(app, logic, nodes):
    ct, pet = nodes
    _expect_refused(app, logic, None, pet, "select the CT")
    _expect_refused(app, logic, ct, None, "select the PET")
    assert inputs.checkInputs(None, None, cheap=True) == "Select the CT volume."


def test_same_volume_for_both(app, logic, nodes):
    ct, _ = nodes
    _expect_refused(app, logic, ct, ct, "same volume")


def test_label_map_as_input(app, logic, nodes):
    ct, pet = nodes
    label = mrml_io.addVolumeNodeFromSitk(sitk.Cast(make_pet() > 2, sitk.sitkUInt8), "lesion mask", labelmap=True)
    _expect_refused(app, logic, ct, label, "label map")
    _expect_refused(app, logic, label, pet, "label map")


def test_pet_not_in_suv_by_values(app, logic, nodes):
    ct, _ = nodes
    bq = mrml_io.addVolumeNodeFromSitk(make_pet(scale=5000.0), "PET Bq per ml")
    message = _expect_refused(app, logic, ct, bq, "does not look like SUV", "DICOM")
    assert "SUVbw" in message  # says how to get SUV
    assert "does not look like SUV" in inputs.checkInputs(ct, bq, cheap=True)  # the button is disabled too


def _engine_refusal(check, *args):
    """The engine's own check on SimpleITK images, as `veloxseg segment` runs it: '' or its message."""
    try:
        check(*args)
    except InputError as error:
        return str(error)
    return ""


@pytest.mark.parametrize("peak, refused", [(2000.0, False), (6000.0, True)])
def test_one_suv_limit_for_the_button_the_logic_and_the_console(app, nodes, peak, refused):
    """A PET peaking at 2000 SUV (a hot spot, the body in SUV) was refused by the module's button (limit 1000)
    but run by the console (5000); now all three checks share checks.SUV_MAX_LIMIT."""
    ct, _ = nodes
    image = make_pet()
    array = sitk.GetArrayFromImage(image)
    array[11, 15, 17] = peak  # one voxel inside the body
    hot = sitk.GetImageFromArray(array)
    hot.CopyInformation(image)
    pet = mrml_io.addVolumeNodeFromSitk(hot, "PET with a hot spot")
    assert checks.SUV_MAX_LIMIT == 5000.0 and not hasattr(inputs, "MAX_PLAUSIBLE_SUV")
    verdicts = {
        "button": inputs.checkInputs(ct, pet, cheap=True),
        "logic": inputs.checkInputs(ct, pet),
        "console": _engine_refusal(checks.check_pet, hot),
    }
    assert {name: bool(message) for name, message in verdicts.items()} == dict.fromkeys(verdicts, refused)
    if refused:
        assert all("does not look like SUV" in message for message in verdicts.values())


@pytest.mark.parametrize("shift_mm, refused", [(80.0, False), (100.0, True)])
def test_one_overlap_rule_for_the_module_and_the_console(app, shift_mm, refused):
    """The PET moved along S until 30 % (run) or 12 % (refused) of its field of view lies inside the CT: the
    module and the engine measure and judge it alike (checks.MIN_PET_IN_CT_FRACTION; the console used to
    take any overlap)."""
    ct_image, pet_image = make_ct(), make_pet()
    pet_image.SetOrigin(tuple(np.array(pet_image.GetOrigin()) + np.array([0.0, 0.0, shift_mm])))
    ct, pet = add_study(mrml_io, ct_image, pet_image)
    engine_fraction = checks.pet_in_ct_fraction(preprocess.field_of_view(ct_image),
                                                preprocess.field_of_view(pet_image))
    assert inputs.overlapFraction(ct, pet) == pytest.approx(engine_fraction, abs=1e-6)
    assert (engine_fraction < checks.MIN_PET_IN_CT_FRACTION) == refused
    verdicts = {
        "button": inputs.checkInputs(ct, pet, cheap=True),
        "logic": inputs.checkInputs(ct, pet),
        "console": _engine_refusal(preprocess.model_grid, ct_image, pet_image, (3.0, 3.0, 3.0), (32, 32, 32)),
    }
    assert {name: bool(message) for name, message in verdicts.items()} == dict.fromkeys(verdicts, refused)
    if refused:
        assert all("do not overlap enough" in message for message in verdicts.values())


def test_pet_not_in_suv_by_units(app, logic, nodes):
    ct, pet = nodes
    _units(pet, "Bq/ml", "Becquerels/milliliter")
    _expect_refused(app, logic, ct, pet, "Bq/ml", "not in SUV", "DICOM module")
    assert "Bq/ml" in inputs.checkInputs(ct, pet, cheap=True)  # units are checked even in the cheap check
    _units(pet, "{SUVlbm}g/ml", "Standardized Uptake Value lean body mass")
    _expect_refused(app, logic, ct, pet, "SUVbw")
    _units(pet, inputs.SUV_BW_UNITS, "Standardized Uptake Value body weight")
    assert inputs.checkInputs(ct, pet) == ""


def test_pet_chosen_as_ct(app, logic, nodes):
    _, pet = nodes
    other_pet = mrml_io.addVolumeNodeFromSitk(make_pet(), "second PET")
    _expect_refused(app, logic, other_pet, pet, "does not look like a CT")


def test_ct_and_pet_do_not_overlap(app, logic, nodes):
    ct, _ = nodes
    far = make_pet()
    far.SetOrigin(tuple(np.array(far.GetOrigin()) + np.array([0.0, 0.0, 800.0])))
    far_pet = mrml_io.addVolumeNodeFromSitk(far, "PET of another study")
    _expect_refused(app, logic, ct, far_pet, "do not overlap")


def test_volume_without_voxels(app, logic, nodes):
    _, pet = nodes
    empty = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    _expect_refused(app, logic, empty, pet, "no voxels")


def test_output_must_be_a_segmentation(app, logic, nodes):
    ct, pet = nodes
    not_a_segmentation = app.scene.AddNewNodeByClass("vtkMRMLTableNode", "a table")
    _expect_refused(app, logic, ct, pet, "not a segmentation", output=not_a_segmentation)


def test_guess_ct_and_pet_from_names_values_units_and_modality(app):
    ct, pet = add_study(mrml_io, make_ct(), make_pet(), ct_name="Series 3", pet_name="Series 7")
    # no hint in the names: values decide (air in HU vs non-negative uptake)
    assert inputs.guessCtAndPet() == (ct, pet)
    # names decide against values...
    ct.SetName("PET AC"), pet.SetName("CT 2.5mm")
    assert inputs.guessCtAndPet() == (pet, ct)
    # ...DICOM modality and SUV units decide against names
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(app.scene)
    modality = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
    sh.SetItemAttribute(sh.CreateItem(sh.GetSceneItemID(), ct), modality, "CT")
    sh.SetItemAttribute(sh.CreateItem(sh.GetSceneItemID(), pet), modality, "PT")
    assert inputs.guessCtAndPet() == (ct, pet)
    # label maps are never candidates; one volume alone is never both
    mrml_io.addVolumeNodeFromSitk(sitk.Cast(make_pet() > 2, sitk.sitkUInt8), "PET mask", labelmap=True)
    assert inputs.guessCtAndPet() == (ct, pet)


def test_guess_with_a_single_volume(app):
    pet = mrml_io.addVolumeNodeFromSitk(make_pet(), "PET_SUV")
    assert inputs.guessCtAndPet() == (None, pet)
