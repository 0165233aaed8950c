"""Training configuration, stage configs, optimizer groups and freezing (no training runs here)."""

from pathlib import Path

import pytest
import torch

from harmon_training.config import DEFAULTS, ConfigError, load_config, set_value
from harmon_training.trainer import apply_trainable, micro_batches_per_step, no_decay, parameter_groups


CONFIGS = Path(__file__).resolve().parent.parent / "training" / "configs"
STAGES = ["stage1_alignment", "stage2_joint", "stage3_high_quality", "finetune", "decoder_only"]


def test_set_parses_yaml_and_rejects_unknown_keys():
    config = load_config(
        None, ["image_size=512", "optim.groups.llm.lr=2e-6", "data.ratio={text: 1, image2text: 3, text2image: 16}"]
    )
    assert config["image_size"] == 512
    assert config["optim"]["groups"]["llm"]["lr"] == 2e-6
    assert config["data"]["ratio"] == {"text": 1, "image2text": 3, "text2image": 16}
    with pytest.raises(ConfigError, match=r"unknown key 'imag_size'.*image_size"):
        set_value(load_config(None), "imag_size=3")
    with pytest.raises(ConfigError, match=r"optim.groups.llm: unknown keys \['lernrate'\]; valid: lr"):
        load_config(None, ["optim.groups.llm.lernrate=3"])
    with pytest.raises(ConfigError, match="key.path=value"):
        set_value(load_config(None), "image_size")
    with pytest.raises(ConfigError, match="image_size must be a positive integer"):
        load_config(None, ["image_size=-3"])
    with pytest.raises(ConfigError, match="data.ratio"):
        load_config(None, ["data.ratio.text=0.5"])
    assert load_config(None, ["train.ema_decay=0.999"])["train"]["ema_decay"] == 0.999
    for bad in ("1.5", "1", "0.0", "true", "fast"):
        with pytest.raises(ConfigError, match=r"train.ema_decay must be null or a number in \(0, 1\)"):
            load_config(None, [f"train.ema_decay={bad}"])
    assert load_config(None, ["train.ema_warmup=false"])["train"]["ema_warmup"] is False
    with pytest.raises(ConfigError, match="train.ema_warmup must be true or false, got 'sometimes'"):
        load_config(None, ["train.ema_warmup=sometimes"])


def test_yaml_unknown_key_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_stepz'"):
        load_config(path)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_configs_hold_table_1(stage):
    config = load_config(CONFIGS / f"{stage}.yaml")
    groups = config["optim"]["groups"]
    expected = {
        "stage1_alignment": ((0, 1, 2), 256, 4096, (False, 1e-5, 1e-4)),
        "stage2_joint": ((1, 3, 8), 256, 4096, (1e-5, 1e-5, 1e-4)),
        "stage3_high_quality": ((1, 3, 16), 512, 1024, (2e-6, 2e-6, 2e-5)),
        "finetune": ((0, 1, 4), 512, None, (1e-5, 1e-5, 1e-5)),
        "decoder_only": ((0, 0, 1), 512, None, (False, False, 1e-4)),
    }[stage]
    ratio, size, batch, rates = expected
    assert tuple(config["data"]["ratio"][task] for task in ("text", "image2text", "text2image")) == ratio
    assert config["image_size"] == size
    assert config["train"]["global_batch_size"] == batch
    for name, rate in zip(("llm", "mar_encoder", "mar_decoder"), rates):
        if rate is False:
            assert groups[name]["trainable"] is False
        else:
            assert groups[name]["trainable"] is True and groups[name]["lr"] == rate


def test_accumulation_follows_ratio_and_global_batch():
    config = load_config(CONFIGS / "stage2_joint.yaml")
    # 1:3:8 with micro-batches 16/16/32: 16 + 48 + 256 = 320 samples per cycle and rank
    assert micro_batches_per_step(config, world_size=32) == (12, 1)  # 320 * 32 = 10240 >= 4096
    assert micro_batches_per_step(config, world_size=4) == (48, 4)  # 1280 per cycle -> 4 cycles
    config["train"]["global_batch_size"] = None
    config["train"]["cycles_per_step"] = 2
    assert micro_batches_per_step(config, world_size=4) == (24, 2)


def test_groups_freezing_and_decay_rules(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    config = load_config(CONFIGS / "stage1_alignment.yaml")
    groups = config["optim"]["groups"]
    counts = apply_trainable(model, groups)
    assert "llm" not in counts and counts["mar_encoder"] > 0 and counts["mar_decoder"] > 0
    assert not any(p.requires_grad for n, p in model.named_parameters() if "language_model" in n or ".vae." in f".{n}")
    optimizer_groups = parameter_groups(model, groups, 0.02, config["optim"]["no_decay_patterns"])
    by_name = {group["group_name"]: group for group in optimizer_groups}
    assert set(by_name) == {"mar_encoder", "mar_encoder/no_decay", "mar_decoder", "mar_decoder/no_decay"}
    assert by_name["mar_encoder"]["lr"] == 1e-5 and by_name["mar_decoder"]["lr"] == 1e-4
    assert by_name["mar_encoder"]["weight_decay"] == 0.02 and by_name["mar_decoder/no_decay"]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer_groups:
        for parameter in group["params"]:
            name = names[id(parameter)]
            expect_no_decay = parameter.ndim <= 1 or name.endswith(".bias") or "diffusion_head" in name
            assert group["group_name"].endswith("no_decay") == expect_no_decay, name
    decoder_matrices = [n for n, p in model.named_parameters() if "diffusion_head" in n and p.ndim == 2]
    assert decoder_matrices and all(
        no_decay(n, torch.zeros(2, 2), [r"model\.diffusion_head\."]) for n in decoder_matrices
    )
    # the MAR position embeddings (3-D) and mask token decay, as in the reference
    assert not no_decay("model.mar_decoder.mask_token", torch.zeros(1, 1, 4), config["optim"]["no_decay_patterns"])


def test_unmatched_trainable_parameters_are_an_error(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    groups = {"llm": dict(DEFAULTS["optim"]["groups"]["llm"])}
    with pytest.raises(ValueError, match="match no optim.groups pattern"):
        parameter_groups(model, groups, 0.0, [])
