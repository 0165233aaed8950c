"""End-to-end training runs on the tiny model and synthetic data made here: every stage config, freezing, LoRA,
resume, and two-process DDP under torchrun."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harmon_pipelines.hub import check_hub_folder
from harmon_training.train import build_parser, run


CONFIGS = Path(__file__).resolve().parent.parent / "training" / "configs"
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Four tiny sources: captions and text-to-image pairs (jsonl), LLaVA VQA (jsonl), text chat (jsonl)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    records, vqa, text = [], [], []
    for index in range(12):
        name, rgb = list(COLORS.items())[index % len(COLORS)]
        pixels = np.full((32, 32, 3), 245, dtype=np.uint8)
        top, left = rng.integers(0, 16, size=2)
        pixels[top : top + 14, left : left + 14] = rgb
        Image.fromarray(pixels).save(root / f"{index}.png")
        records.append({"image": f"{index}.png", "text": f"a {name} square"})
        vqa.append(
            {
                "image": f"{index}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nwhat color is the square?"},
                    {"from": "gpt", "value": name},
                ],
            }
        )
        text.append(
            {
                "messages": [
                    {"role": "user", "content": f"name a colour like {name}"},
                    {"role": "assistant", "content": name},
                ]
            }
        )
    for name, rows in (("captions", records), ("vqa", vqa), ("text", text)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def tiny_arguments(config: str, model: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(CONFIGS / f"{config}.yaml"),
        "--model",
        str(model),
        "--output-dir",
        str(output),
        "--data",
        f"caption=jsonl:{data / 'captions.jsonl'}",
        "--data",
        f"t2i=jsonl:{data / 'captions.jsonl'}",
        "--data",
        f"vqa=jsonl:{data / 'vqa.jsonl'}",
        "--data",
        f"text=jsonl:{data / 'text.jsonl'}",
        "--set",
        "image_size=32",
        "--set",
        "data.micro_batch_size={text: 2, image2text: 2, text2image: 2}",
        "--set",
        "data.max_length=256",
        "--set",
        "train.global_batch_size=null",
        "--set",
        "train.cycles_per_step=1",
        "--set",
        "train.save_steps=3",
        "--set",
        "train.logging_steps=1",
        "--set",
        "optim.warmup=0",
        "--set",
        "train.bf16=false",
        "--max-steps",
        "3",
        *extra,
    ]


def train(*arguments):
    return run(build_parser().parse_args(list(arguments)))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    "config", ["stage1_alignment", "stage2_joint", "stage3_high_quality", "finetune", "decoder_only"]
)
def test_stage_config_trains_three_steps(config, tiny_dir, data_dir, tmp_path):
    from transformers import AutoModel

    final = train(*tiny_arguments(config, tiny_dir, data_dir, tmp_path / "run"))
    assert check_hub_folder(final) == []
    state = json.loads((tmp_path / "run" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    losses = [entry for entry in state["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in losses] == [1, 2, 3]
    assert all(np.isfinite(entry["loss"]) for entry in losses)
    loaded = AutoModel.from_pretrained(final)
    assert loaded.config.model_type == "harmon"
    before, after = weights(tiny_dir), weights(final)
    changed = {name.split(".")[1] for name in before if not torch.equal(before[name], after[name])}
    expected = {
        "stage1_alignment": {"mar_encoder", "proj_in", "proj_out", "mar_decoder", "diffusion_head"},
        "decoder_only": {"proj_out", "mar_decoder", "diffusion_head"},
    }.get(config, {"language_model", "mar_encoder", "proj_in", "proj_out", "mar_decoder", "diffusion_head"})
    assert changed == expected, changed


def test_stage1_keeps_the_llm_bit_identical(tiny_dir, data_dir, tmp_path):
    final = train(*tiny_arguments("stage1_alignment", tiny_dir, data_dir, tmp_path / "run"))
    before, after = weights(tiny_dir), weights(final)
    for name in before:
        if ".language_model." in name or ".vae." in name:
            assert torch.equal(before[name], after[name]), name
    assert any(not torch.equal(before[n], after[n]) for n in before if ".mar_encoder." in n)


class Interrupted(Exception):
    pass


def train_interrupted_after_checkpoint(monkeypatch, step: int, arguments: list[str]) -> None:
    """Run training and stop it with an exception right after `checkpoint-{step}` is written, as a crash would."""
    from transformers import TrainerCallback

    from harmon_training.trainer import HarmonTrainer

    class StopAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise Interrupted

    original = HarmonTrainer.train

    def interrupted_train(self, *args, **kwargs):
        self.add_callback(StopAfterCheckpoint())
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(HarmonTrainer, "train", interrupted_train)
        with pytest.raises(Interrupted):
            train(*arguments)


def test_resume_matches_an_uninterrupted_run(tiny_dir, data_dir, tmp_path, monkeypatch):
    common = ["--set", "train.save_steps=2", "--set", "train.save_total_limit=null", "--max-steps", "4"]
    straight = train(*tiny_arguments("stage2_joint", tiny_dir, data_dir, tmp_path / "straight", *common))

    interrupted = tiny_arguments("stage2_joint", tiny_dir, data_dir, tmp_path / "resumed", *common)
    train_interrupted_after_checkpoint(monkeypatch, 2, interrupted)
    assert sorted(path.name for path in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = train(*tiny_arguments("stage2_joint", tiny_dir, data_dir, tmp_path / "resumed", *common, "--resume"))
    a, b = weights(straight), weights(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-5, msg=name)
    state = json.loads((tmp_path / "resumed" / "checkpoint-4" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    # Resuming a run that already reached max_steps (here: lowered to its first checkpoint's step) takes no step:
    # the final model is that checkpoint's.
    shutil.rmtree(tmp_path / "resumed" / "checkpoint-4")
    again = train(
        *tiny_arguments(
            "stage2_joint", tiny_dir, data_dir, tmp_path / "resumed", *common[:-2], "--max-steps", "2", "--resume"
        )
    )
    assert not (tmp_path / "resumed" / "checkpoint-3").exists()
    c, d = weights(again), weights(tmp_path / "resumed" / "checkpoint-2")
    for name in c:
        torch.testing.assert_close(c[name], d[name], atol=0, rtol=0, msg=name)


def test_lora_trains_adapters_saves_reloads_and_merges(tiny_dir, data_dir, tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModel

    final = train(
        *tiny_arguments(
            "stage2_joint",
            tiny_dir,
            data_dir,
            tmp_path / "run",
            "--lora",
            "--set",
            "optim.groups.mar_encoder.trainable=false",
            "--set",
            "lora.merge_at_end=true",
        )
    )
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    base = AutoModel.from_pretrained(tiny_dir)
    adapted = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_dir), str(final)).eval()
    from safetensors.torch import load_file

    adapter = load_file(str(final / "adapter_model.safetensors"))
    assert any("lora_A" in name for name in adapter) and any("mar_decoder" in name for name in adapter)
    assert not any("mar_encoder" in name for name in adapter)  # frozen by config: not trained, not saved
    merged = AutoModel.from_pretrained(final / "merged").eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(base(input_ids=ids).logits, merged(input_ids=ids).logits)
    base_state, merged_state = base.state_dict(), merged.state_dict()
    for name, value in base_state.items():
        if ".mar_encoder." in name or ".vae." in name:
            assert torch.equal(value, merged_state[name]), name


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from harmon_training.train import build_parser, run
    from harmon_training import trainer as trainer_module

    seen = {}
    original = trainer_module.HarmonTrainer.train

    def train_and_record(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        seen["model"] = self.model
        return result

    trainer_module.HarmonTrainer.train = train_and_record
    original_step = trainer_module.HarmonTrainer.training_step

    def step_and_record(self, *args, **kwargs):
        seen.setdefault("rng", torch.get_rng_state().clone())  # the model's randomness at the first micro-batch
        return original_step(self, *args, **kwargs)

    trainer_module.HarmonTrainer.training_step = step_and_record
    torch.set_num_threads(1)
    out = sys.argv[1]
    run(build_parser().parse_args(sys.argv[2:]))
    state = {name: p.detach().cpu() for name, p in seen["model"].named_parameters()}
    torch.save(state, f"{out}/rank{dist.get_rank()}.pt")
    torch.save(seen["rng"], f"{out}/rng{dist.get_rank()}.pt")
    dist.destroy_process_group()
    """
)


@pytest.mark.parametrize("task_clip", [False, True], ids=["shared-clip", "per-task-clip"])
def test_two_process_ddp_keeps_ranks_identical(task_clip, tiny_dir, data_dir, tmp_path):
    """With per-task clipping, every micro-batch's gradient must be averaged over the ranks before its clip (DDP
    only all-reduces the last micro-batch of a step); otherwise the ranks' weights drift apart after one step. The
    ranks' own randomness (noise, masks) must differ, or every rank would train on the same noise."""
    extra = ["--set", "optim.task_max_grad_norm={text: 0.01, image2text: 0.01, text2image: 0.01}"] if task_clip else []
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    import socket

    with socket.socket() as probe:  # a free port, so a lingering process elsewhere cannot block the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(script),
        str(tmp_path),
        *tiny_arguments("stage2_joint", tiny_dir, data_dir, tmp_path / "run", *extra),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-12000:]
    # Ranks draw different diffusion noise, masking orders and timesteps (seed + rank), yet keep identical weights.
    rng0, rng1 = (torch.load(tmp_path / f"rng{rank}.pt", weights_only=True) for rank in (0, 1))
    assert not torch.equal(rng0, rng1)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    before = weights(tiny_dir)
    assert any(
        not torch.equal(before[name.removeprefix("module.")], value)
        for name, value in rank0.items()
        if name.removeprefix("module.") in before
    )


def test_new_model_from_config_around_a_tokenizer_vae_and_llm(tiny_model, tokenizer, data_dir, tmp_path):
    """`model.init: from_config` (how the embedded demo model is trained from scratch)."""
    from transformers import AutoModel

    tokenizer.save_pretrained(tmp_path / "tokenizer")
    tiny_model.model.vae.save_pretrained(tmp_path / "vae")
    tiny_model.model.language_model.save_pretrained(tmp_path / "llm")
    mar = (
        "{encoder_hidden_size: 32, encoder_num_layers: 1, encoder_num_heads: 2, decoder_hidden_size: 32, "
        "decoder_num_layers: 1, decoder_num_heads: 2, buffer_size: 2, image_size: 32, diffusion_head_depth: 1, "
        "diffusion_head_width: 32, num_sampling_steps: 5}"
    )
    arguments = tiny_arguments("stage2_joint", "unused", data_dir, tmp_path / "run")
    arguments = arguments[: arguments.index("--model")] + arguments[arguments.index("--model") + 2 :]
    final = train(
        *arguments,
        "--set",
        "model.init=from_config",
        "--set",
        f"model.config={mar}",
        "--set",
        f"model.tokenizer={tmp_path / 'tokenizer'}",
        "--set",
        f"model.vae={tmp_path / 'vae'}",
        "--set",
        f"model.llm={tmp_path / 'llm'}",
    )
    model = AutoModel.from_pretrained(final)
    assert (model.config.encoder_hidden_size, model.config.buffer_size) == (32, 2)
    assert model.config.image_token_id == tokenizer.image_token_id
    assert model.config.text_config.hidden_size == tiny_model.config.text_config.hidden_size
    trained_vae, given_vae = model.model.vae.state_dict(), tiny_model.model.vae.state_dict()
    assert all(
        torch.equal(trained_vae[name], given_vae[name]) for name in given_vae
    )  # frozen, and it is the given one
    embed = model.model.language_model.embed_tokens.weight
    given = tiny_model.model.language_model.embed_tokens.weight
    assert (embed - given).abs().max() < 1e-2  # started from the given LLM (3 small steps since)


def test_command_line_mistakes_are_one_line_errors(tiny_dir, data_dir, tmp_path, capsys):
    from harmon_training.train import main

    base = tiny_arguments("stage2_joint", tiny_dir, data_dir, tmp_path / "run")
    for extra, message in (
        (["--set", "optim.groups.llm.lernrate=1"], "unknown keys ['lernrate']"),
        (["--set", "imag_size=3"], "unknown key 'imag_size'"),
        (["--data", "pictures=jsonl:x.jsonl"], "--data: "),
        (["--resume"], "--resume: no checkpoint"),
    ):
        assert main(base + extra) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert error[-1].startswith("error: ") and message in error[-1], error


def test_ema_is_the_final_model_and_resumes(tiny_dir, data_dir, tmp_path, monkeypatch):
    """`train.ema_decay`: every checkpoint keeps the raw weights plus the average; the final model is the average
    of the raw weights after each step (diffusers' warm-up (1 + s) / (10 + s), capped by the decay), and a resumed
    run continues the same average."""
    from safetensors import safe_open

    from harmon_training.ema import EMA_FILE

    common = [
        "--set",
        "train.ema_decay=0.25",
        "--set",
        "train.save_steps=1",
        "--set",
        "train.save_total_limit=null",
        "--max-steps",
        "4",
    ]
    straight = train(*tiny_arguments("stage2_joint", tiny_dir, data_dir, tmp_path / "straight", *common))
    raw = [weights(tmp_path / "straight" / f"checkpoint-{step}") for step in range(1, 5)]
    decays = [0.0, 2 / 11, 0.25, 0.25]  # step 1: the average starts at the weights; then min((1 + s) / (10 + s), 0.25)
    final = weights(straight)
    trained = [name for name in final if not torch.equal(raw[0][name], raw[3][name])]
    assert trained and all(".vae." not in name for name in trained)
    for name in final:
        expected = raw[0][name].double()
        for decay, step_weights in zip(decays[1:], raw[1:]):
            expected = decay * expected + (1 - decay) * step_weights[name].double()
        torch.testing.assert_close(final[name].double(), expected, atol=1e-6, rtol=1e-5, msg=name)
    assert any(not torch.allclose(final[name], raw[3][name]) for name in trained)  # not just the last weights
    with safe_open(str(tmp_path / "straight" / "checkpoint-2" / EMA_FILE), framework="pt") as handle:
        assert handle.metadata()["optimization_step"] == "2"
        assert ".vae." not in " ".join(handle.keys()) and set(handle.keys()) >= set(trained)

    interrupted = tiny_arguments("stage2_joint", tiny_dir, data_dir, tmp_path / "resumed", *common)
    train_interrupted_after_checkpoint(monkeypatch, 2, interrupted)
    resumed = weights(train(*interrupted, "--resume"))
    for name in final:
        torch.testing.assert_close(resumed[name], final[name], atol=1e-5, rtol=1e-5, msg=name)
    with safe_open(str(tmp_path / "resumed" / "checkpoint-4" / EMA_FILE), framework="pt") as handle:
        assert handle.metadata()["optimization_step"] == "4"  # continued, not restarted at the checkpoint
    # A checkpoint written without an average cannot silently start a new one on resume.
    (tmp_path / "resumed" / "checkpoint-4" / EMA_FILE).unlink()
    shutil.rmtree(tmp_path / "resumed" / "final")
    with pytest.raises(FileNotFoundError, match="has no ema.safetensors"):
        train(*tiny_arguments("stage2_joint", tiny_dir, data_dir, tmp_path / "resumed", *common, "--resume"))


def test_ema_without_warmup_applies_the_full_decay_from_the_start():
    """`train.ema_warmup: false` (a stage continuing a trained model): after the first step the average moves by
    (1 - decay) per step, not by the warm-up's (1 - (1 + s) / (10 + s)), which would forget the trained start."""
    from harmon_training.ema import EmaCallback

    for warmup, decay_at_step_2 in ((True, 2 / 11), (False, 0.9)):
        layer = torch.nn.Linear(2, 2)
        callback = EmaCallback(layer, 0.9, warmup=warmup)
        history = []
        for value in (1.0, 3.0):
            with torch.no_grad():
                layer.weight.fill_(value)
            history.append(value)
            callback.on_step_end(None, None, None)
        expected = decay_at_step_2 * history[0] + (1 - decay_at_step_2) * history[1]  # step 1 copies the weights
        callback.copy_to_model()
        torch.testing.assert_close(layer.weight, torch.full((2, 2), expected))


def test_pretrained_model_config_overrides(tiny_dir):
    """`model.config` with `init: pretrained` changes attributes of the checkpoint's config (a later stage's
    training-time setting such as `visual_grad_scale`) and refuses names the config does not have."""
    from harmon_training.config import ConfigError
    from harmon_training.model_init import load_model

    model, _ = load_model({"init": "pretrained", "path": str(tiny_dir), "config": {"visual_grad_scale": 0.5}})
    assert model.config.visual_grad_scale == 0.5
    assert load_model({"init": "pretrained", "path": str(tiny_dir)})[0].config.visual_grad_scale == 0.1
    with pytest.raises(ConfigError, match=r"model.config: \['visual_grad_scael'\] are not attributes"):
        load_model({"init": "pretrained", "path": str(tiny_dir), "config": {"visual_grad_scael": 0.5}})
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_model({"init": "pretrained", "path": str(tiny_dir), "config": "harmon-0.5b"})
