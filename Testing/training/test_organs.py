"""Anatomy as a training target: phantom organ maps, their way through prepare and cropping, the organ head
and its loss, warm starts from models without the head, and the bf16 training step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from veloxseg_train.augment import AugmentParams, apply
from veloxseg_train.data import phantom_canvas as pc
from veloxseg_train.data.organs import IGNORE, ORGAN, ORGAN_NAMES, TISSUE_ORGAN
from veloxseg_train.data.prepare import PrepareOptions, prepare_dataset
from veloxseg_train.data.prepared import load_case, load_dataset
from veloxseg_train.data.sources import find_synthetic_cases
from veloxseg_train.data.synth_dataset import generate_dataset
from veloxseg_train.data.synthetic import PhantomConfig, generate_case
from veloxseg_train.losses import SDKTLoss, organ_loss
from veloxseg_train.model import VeloxSeg, VeloxSegConfig
from veloxseg_train.model.patch_embed import PatchEmbed
from veloxseg_train.sampling import CropSampler
from veloxseg_train.training_data import make_volume

COARSE = PhantomConfig(pet_spacing_mm=(4.0, 4.0, 4.0))
REQUIRED = ("brain", "salivary_tonsils", "thyroid", "myocardium", "blood_pool", "lung", "liver", "spleen",
            "kidney", "bladder", "bowel_stomach", "bone_marrow", "muscle")


@pytest.fixture(scope="module")
def phantom():
    case = generate_case(4242, lesion_free=False, config=COARSE)
    return case, sitk.GetArrayFromImage(case.organs), sitk.GetArrayFromImage(case.label)


def test_organ_map_lies_on_the_pet_grid_and_holds_every_required_organ(phantom):
    case, organs, _ = phantom
    assert case.organs.GetSize() == case.pet.GetSize()
    assert case.organs.GetOrigin() == case.pet.GetOrigin()
    present = {ORGAN_NAMES[c] for c in np.unique(organs)}
    assert set(REQUIRED) <= present, set(REQUIRED) - present
    assert organs.max() < len(ORGAN_NAMES)


def test_hot_organs_are_labelled_where_they_are_hot(phantom):
    case, organs, label = phantom
    pet = sitk.GetArrayFromImage(case.pet)
    brain = organs == ORGAN["brain"]
    assert pet[brain].mean() > 3.0 * pet[organs == ORGAN["muscle"]].mean()
    # The lungs are the coldest organ with a class of their own.
    assert pet[organs == ORGAN["lung"]].mean() < pet[organs == ORGAN["liver"]].mean()


def test_lesions_keep_the_code_of_the_organ_they_grow_in():
    """Over several phantoms, every liver, lung and bone lesion sits on its organ's code."""
    site_organ = {"liver": ORGAN["liver"], "lung": ORGAN["lung"], "bone": ORGAN["bone_marrow"]}
    checked = 0
    for seed in range(6):
        case = generate_case(seed, lesion_free=False, config=COARSE)
        organs = sitk.GetArrayFromImage(case.organs)
        for lesion in case.lesions:
            if lesion["site"] not in site_organ:
                continue
            index = case.organs.TransformPhysicalPointToIndex(lesion["centre_lps_mm"])
            assert organs[index[::-1]] == site_organ[lesion["site"]], (seed, lesion["site"])
            checked += 1
    assert checked >= 3


def test_urine_belongs_to_the_kidney_the_ureter_or_the_bladder_by_where_it_is_painted():
    cv = pc.Canvas(np.arange(20.0), np.arange(20.0), np.arange(20.0), {pc.URINE: (20.0, 5.0)})
    cv.paint(cv.box((0, 0, 0), (5, 5, 5)), pc.URINE)
    cv.paint(cv.box((10, 10, 10), (12, 12, 12)), pc.URINE, organ=ORGAN["kidney"])
    assert cv.organ[0, 0, 0] == ORGAN["bladder"] == TISSUE_ORGAN[pc.URINE]
    assert cv.organ[11, 11, 11] == ORGAN["kidney"]
    cv.paint(cv.box((0, 0, 0), (20, 20, 20)), pc.FAT, only=(pc.AIR,))  # fills around, leaves urine alone
    assert cv.organ[19, 19, 19] == ORGAN["other"] and cv.organ[11, 11, 11] == ORGAN["kidney"]


def test_prepare_carries_the_organ_map_and_marks_cases_without_one(tmp_path):
    generate_dataset(tmp_path / "synth", 2, seed=3, config=PhantomConfig(pet_spacing_mm=(6.0, 6.0, 6.0)))
    (tmp_path / "synth" / "case_0001" / "organs.nii.gz").unlink()  # like a case from another source
    manifest = json.loads((tmp_path / "synth" / "manifest.json").read_text())
    assert manifest["organ_names"] == list(ORGAN_NAMES)
    cases = find_synthetic_cases(tmp_path / "synth")
    assert cases[0].organs is not None and cases[1].organs is None
    prepare_dataset(cases, tmp_path / "prep", PrepareOptions(val_fraction=0.0, test_fraction=0.0))
    dataset = load_dataset(tmp_path / "prep")
    with_map, without = dataset["cases"]
    assert with_map["organs"] is True and without["organs"] is False
    prepared = load_case(tmp_path / "prep", with_map)
    assert prepared.organs.shape == prepared.label.shape and prepared.organs.dtype == np.uint8
    assert ORGAN["liver"] in prepared.organs and ORGAN["lung"] in prepared.organs
    assert load_case(tmp_path / "prep", without).organs is None


def _volume(organs, with_organs=True):
    shape = (40, 40, 40)
    ct = np.full(shape, 40.0, np.float32)
    pet = np.ones(shape, np.float32)
    label = np.zeros(shape, np.uint8)
    label[15:25, 15:25, 15:25] = 1
    norm = {"CT": {"clip_low": -1000, "clip_high": 1000, "mean": 0, "std": 100},
            "PET": {"clip_low": 0, "clip_high": 30, "mean": 1, "std": 2}}
    return make_volume("v", ct, pet, label, norm, (32, 32, 32), (3.0, 2.0, 2.0), organs=organs,
                       with_organs=with_organs)


def test_crops_carry_organ_codes_or_ignore_and_augmentation_keeps_them_aligned():
    organs = np.where(np.indices((40, 40, 40)).sum(0) % 7 == 0, ORGAN["liver"], ORGAN["lung"]).astype(np.uint8)
    organs[15:25, 15:25, 15:25] = ORGAN["kidney"]  # the lesion's host organ
    sampler = CropSampler([32, 32, 32], 1.0, 1.0)
    image, label = sampler.crop(_volume(organs), (20, 20, 20))
    assert label.shape == (2, 32, 32, 32)
    assert np.array_equal(label[0] == 1, label[1] == ORGAN["kidney"])
    _, unlabelled = sampler.crop(_volume(None), (20, 20, 20))
    assert np.all(unlabelled[1] == IGNORE)
    _, plain = sampler.crop(_volume(None, with_organs=False), (20, 20, 20))
    assert plain.shape == (32, 32, 32)
    params = AugmentParams(angle_rad=0.4, scale_zyx=(1.1, 0.9, 1.0), flip_z=True)
    _, moved = apply(torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(label.copy()), params)
    moved = moved.numpy()
    assert moved.shape == label.shape and not np.array_equal(moved, label)
    assert np.array_equal(moved[0] == 1, moved[1] == ORGAN["kidney"])  # one sampling grid for both channels


def test_organ_loss_skips_unlabelled_voxels_and_samples_block_centres():
    logits = torch.zeros(2, 3, 2, 2, 2, requires_grad=True)
    organs = torch.full((2, 8, 8, 8), IGNORE, dtype=torch.uint8)
    assert float(organ_loss(logits, organs).detach()) == 0.0  # nothing labelled: 0, not NaN
    organs[0, 2::4, 2::4, 2::4] = 1  # block centres of sample 0 only
    organs[0, 0, 0, 0] = 2  # off-centre: not sampled
    with torch.no_grad():
        logits[0, 1] = 5.0
    value = organ_loss(logits, organs)
    expected = -torch.log_softmax(torch.tensor([0.0, 5.0, 0.0]), 0)[1]
    assert torch.isclose(value, expected, atol=1e-6)
    value.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0


def test_organ_head_is_optional_and_its_loss_reaches_only_with_labels():
    plain = VeloxSeg(VeloxSegConfig.autopet())
    assert plain.seg_decoder.organ_head is None
    assert not any(k.startswith("seg_decoder.organ_head") for k in plain.state_dict())
    torch.manual_seed(0)
    model = VeloxSeg(VeloxSegConfig.autopet(n_organs=len(ORGAN_NAMES))).eval()
    x = torch.randn(1, 2, 96, 96, 96)
    with torch.no_grad():
        logits, organs = model.forward_with_organs(x)
        assert torch.equal(logits, model(x))  # the lesion output is the plain eval output
    assert organs.shape == (1, len(ORGAN_NAMES), 24, 24, 24)
    model.train()
    outputs = model(x)
    label = torch.zeros(1, 2, 96, 96, 96, dtype=torch.uint8)
    label[:, 1] = ORGAN["liver"]
    with_labels = SDKTLoss(organ_weight=0.5)(outputs, x, label)
    assert with_labels.organ > 0
    assert torch.isclose(with_labels.total, with_labels.seg + 0.5 * with_labels.recon + 2.0 * with_labels.sdkt
                         + 0.5 * with_labels.organ)
    label[:, 1] = IGNORE
    without = SDKTLoss(organ_weight=0.5)(outputs, x, label)
    assert float(without.organ) == 0.0


def test_bf16_autocast_training_step_gives_float32_gradients_close_to_float32():
    torch.manual_seed(1)
    embed = PatchEmbed(1, 8, 4, 0.0)
    x = torch.randn(2, 1, 16, 16, 16)
    embed(x).square().mean().backward()
    reference = embed.proj.weight.grad.clone()
    embed.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = embed(x)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    grad = embed.proj.weight.grad
    assert grad.dtype == torch.float32
    assert torch.allclose(grad, reference, rtol=0.05, atol=0.05 * float(reference.abs().max()))


def test_site_agreement_compares_the_named_site_with_the_organ_under_each_found_lesion():
    from types import SimpleNamespace

    from veloxseg_train.evaluate import site_agreement

    truth = np.zeros((10, 10, 30), bool)
    truth[2:5, 2:5, 2:5] = truth[2:5, 2:5, 12:15] = truth[2:5, 2:5, 22:25] = True  # three true lesions
    organs = np.zeros(truth.shape, np.uint8)
    organs[:, :, :10] = ORGAN["liver"]
    organs[:, :, 10:20] = ORGAN["lung"]
    ids = np.zeros(truth.shape, np.int32)
    ids[2:5, 2:5, 2:6] = 1  # finds the liver lesion, named liver
    ids[2:5, 2:5, 12:14] = 2  # finds the lung lesion, named bone: wrong
    # the third (on code 0: lymph node / soft tissue) is missed: not judged
    lesions = [SimpleNamespace(id=1, site="liver"), SimpleNamespace(id=2, site="bone")]
    assert site_agreement(ids, lesions, truth, organs) == {"site_correct": 1, "site_judged": 2}
    unnamed = [SimpleNamespace(id=1, site=""), SimpleNamespace(id=2, site="")]
    assert site_agreement(ids, unnamed, truth, organs) == {"site_correct": 0, "site_judged": 0}
    assert site_agreement(ids, lesions, truth, None) == {"site_correct": 0, "site_judged": 0}


def test_lesion_sensitivity_by_size_and_site_accuracy_in_the_summary():
    from veloxseg_train.metrics import case_metrics, summarize

    truth = np.zeros((20, 20, 40), bool)
    truth[1:3, 1:3, 1:3] = True  # 8 voxels = 0.008 mL at 1 mm: small, missed
    truth[5:15, 5:15, 10:30] = True  # 2 mL: found
    pred = np.zeros_like(truth)
    pred[6:8, 6:8, 12:14] = True
    row = case_metrics(pred, truth, (1.0, 1.0, 1.0))
    assert (row["true_lesions_lt1ml"], row["found_lesions_lt1ml"]) == (1, 0)
    assert (row["true_lesions_1to5ml"], row["found_lesions_1to5ml"]) == (1, 1)
    row.update(site_correct=1, site_judged=1)
    other = dict(row, site_correct=0, site_judged=1)
    summary = summarize([row, other])
    assert summary["lesion_sensitivity_lt1ml"] == 0.0 and summary["lesion_sensitivity_1to5ml"] == 1.0
    assert np.isnan(summary["lesion_sensitivity_ge5ml"]) and summary["site_accuracy"] == 0.5


def test_a_checkpoint_with_organ_head_names_sites_through_the_engine(tmp_path):
    from veloxseg_train.checkpoint import save_checkpoint
    from veloxseg_train.evaluate import TorchModel

    norm = {"CT": {"clip_low": -1000.0, "clip_high": 1000.0, "mean": 0.0, "std": 300.0},
            "PET": {"clip_low": 0.0, "clip_high": 30.0, "mean": 1.0, "std": 2.0}}
    model = VeloxSeg(VeloxSegConfig.autopet(n_organs=len(ORGAN_NAMES)))
    path = save_checkpoint(tmp_path / "organs.pt", model, norm, {"spacing_xyz_mm": [2.036, 2.036, 3.0]})
    wrapped = TorchModel(path)
    assert wrapped.manifest.has_organs and wrapped.manifest.organ_sites[ORGAN["liver"]] == "liver"
    logits, organs = wrapped.run_with_organs(np.zeros((1, 2, 96, 96, 96), np.float32))
    assert logits.shape == (1, 2, 96, 96, 96) and organs.shape == (1, len(ORGAN_NAMES), 24, 24, 24)
