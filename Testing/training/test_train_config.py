"""Recipe files: shipped configs load, typos are errors, the LR schedule is warm-up + cosine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from veloxseg_train.train_config import TrainConfig, dump_toml, load_config
from veloxseg_train.trainer import build_scheduler

CONFIGS = Path(__file__).resolve().parents[2] / "Training" / "configs"


def test_shipped_configs_load():
    paper = load_config(CONFIGS / "autopet.toml")
    assert (paper.epochs, paper.lr, paper.weight_decay, paper.warmup_epochs, paper.eta_min) == (
        300, 2.5e-4, 0.01, 10.0, 6e-6)
    assert (paper.volumes_per_step, paper.crops_per_volume, paper.patch_size) == (2, 2, [96, 96, 96])
    assert (paper.recon_weight, paper.sdkt_weight, paper.ds_weights) == (0.5, 2.0, [1.0] * 4)
    assert paper.lesion_ratio == paper.background_ratio == 1.0
    for name in ("bundled", "smoke"):
        load_config(CONFIGS / f"{name}.toml")


def test_wholebody_recipe_turns_on_the_issue_12_machinery():
    config = load_config(CONFIGS / "wholebody.toml")
    assert config.mine_every > 0 and config.mine_after > 0 and 0 < config.mine_fraction < 1
    assert config.hard_negative_fraction > 0 and config.centre_jitter > 0
    assert all(getattr(config, f"{name}_p") > 0 for name in ("scale", "elastic", "pet_scale", "pet_blur",
                                                            "pet_noise", "ct_contrast"))
    assert config.flip_z and config.rotate


def test_new_keys_default_to_the_reference():
    config = TrainConfig()
    assert config.mine_every == 0 and not config.fused_optimizer and not config.channels_last
    assert all(getattr(config, f"{name}_p") == 0 for name in ("scale", "elastic", "pet_scale", "pet_blur",
                                                             "pet_noise", "ct_contrast"))


@pytest.mark.parametrize("text, message", [
    ("[optim]\nlr = 1e-3\nlearning_rate = 2\n", "unknown key 'learning_rate'"),
    ("[optim]\nepochs = 3\n", "belongs in [schedule]"),
    ("[optimiser]\nlr = 1e-3\n", "unknown section [optimiser]"),
    ("lr = 1e-3\n", "unknown section [lr]"),
    ("[schedule]\nepochs = 2.5\n", "'epochs' must be of type int"),
    ("[augment]\nrotate = 1\n", "'rotate' must be of type bool"),
    ("[augment]\nrotate_p = 1.5\n", "rotate_p and flip_z_p must be in [0, 1]"),
    ("[schedule]\nscheduler_interval = \"batch\"\n", "scheduler_interval"),
    # extended augmentation, mining and speed switches (issue 12)
    ("[augment]\nscale_p = 1.5\n", "scale_p must be in [0, 1]"),
    ("[augment]\npet_noise_p = -0.1\n", "pet_noise_p must be in [0, 1]"),
    ("[augment]\npet_scale_range = [1.25, 0.8]\n", "pet_scale_range must be [low, high]"),
    ("[augment]\npet_blur_sigma = [-0.5, 1.0]\n", "pet_blur_sigma must be [low, high]"),
    ("[augment]\nct_contrast_range = [0.9]\n", "ct_contrast_range must be [low, high]"),
    ("[augment]\nscale_range = [0.0, 1.1]\n", "scale factors must be > 0"),
    ("[augment]\nelastic_voxels = -1.0\n", "elastic_voxels must be >= 0"),
    ("[sampling]\nmine_every = -1\n", "mine_every and mine_after must be >= 0"),
    ("[sampling]\nmine_volumes = 0\n", "mine_volumes >= 1"),
    ("[sampling]\nmine_fraction = 1.5\n", "mine_fraction must be in [0, 1]"),
    ("[sampling]\nmine_overlap = 1.0\n", "mine_overlap in [0, 1)"),
    ("[sampling]\nmine_every = 2.5\n", "'mine_every' must be of type int"),
    ("[train]\nfused_optimizer = 1\n", "'fused_optimizer' must be of type bool"),
    ("[train]\nchannels_last = \"yes\"\n", "'channels_last' must be of type bool"),
])
def test_config_errors_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        load_config(path)
    assert message in str(error.value)


def test_dump_round_trips(tmp_path):
    config = load_config(CONFIGS / "bundled.toml")
    config.model_overrides = {"proj_drop": 0.0}
    path = tmp_path / "again.toml"
    path.write_text(dump_toml(config))
    assert load_config(path) == config
    assert TrainConfig.from_dict(config.to_dict()) == config


def _lrs(config: TrainConfig, steps_per_epoch: int = 1, units: int = 0):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    lrs = []
    for _ in range(units):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_paper_schedule_warms_up_then_anneals_to_eta_min():
    config = load_config(CONFIGS / "autopet.toml")
    lrs = _lrs(config, units=300)
    assert lrs[0] == pytest.approx(2.5e-5) and lrs[9] == pytest.approx(2.5e-4)
    assert lrs[10] == pytest.approx(2.5e-4)  # no 1.1x bump at epoch 10 (the reference's quirk)
    assert lrs[299] == pytest.approx(6e-6)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    middle = 6e-6 + (2.5e-4 - 6e-6) * 0.5 * (1 + math.cos(math.pi * 145 / 289))
    assert lrs[155] == pytest.approx(middle)


def test_step_schedule_spans_all_steps():
    config = load_config(CONFIGS / "bundled.toml")
    lrs = _lrs(config, steps_per_epoch=100, units=1000)
    assert lrs[0] == pytest.approx(5e-4 / 50) and lrs[49] == pytest.approx(5e-4)
    assert lrs[-1] == pytest.approx(1e-5) and max(lrs) == pytest.approx(5e-4)
