"""The bad-input corpus of the engine tests (Testing/helpers/bad_inputs.py) through the Slicer Logic on real
MRML: each case is refused with an InputError and the scene is left as it was.

Files are read as the Logic's folder batch reads them (the engine's reader): a file that is incomplete,
damaged, not a scalar 3-D volume or has NaN bytes is refused there, before any node exists. Every other case
becomes CT and PET volume nodes, and `logic.segment` must refuse them with the engine's own checks.
"""

import pytest
from bad_inputs import CORPUS
from mrml_study import scene_snapshot

from VeloxSegSlicerLib import mrml_io
from VeloxSegSlicerLib.engine import InputError, read_image

# The Logic checks the PET first, so it calls a swapped pair's PET a CT (the CLI, reading the CT first, calls
# the CT a PET); both say "swapped".
WORDS = {"ct_and_pet_swapped": ("swapped",)}


@pytest.mark.parametrize("case", [case for case in CORPUS if case.code == 2], ids=lambda case: case.name)
def test_corpus_through_the_logic(case, app, logic, tmp_path):
    ct_path, pet_path = case.build(tmp_path)
    before = scene_snapshot(app.scene)
    try:
        ct_image, pet_image = read_image(ct_path, "CT"), read_image(pet_path, "PET")
    except InputError as error:
        assert scene_snapshot(app.scene) == before
        message = str(error)
    else:
        ct_node = mrml_io.addVolumeNodeFromSitk(ct_image, "CT")
        pet_node = mrml_io.addVolumeNodeFromSitk(pet_image, "PET")
        before = scene_snapshot(app.scene)
        with pytest.raises(InputError) as refused:
            logic.segment(ct_node, pet_node)
        assert scene_snapshot(app.scene) == before
        message = str(refused.value)
    assert "\n" not in message
    # the Logic names nodes, not files: check the words that describe the problem
    words = [word for word in WORDS.get(case.name, case.words) if "." not in word and word != "PET"]
    for word in words:
        assert word.lower() in message.lower(), message
