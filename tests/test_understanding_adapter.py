"""The understanding adapter (`config.understanding_adapter`, modeling_harmon_adapters.py): `from_pretrained` loads the
PEFT adapter the config names; understanding runs with it; every drawing path runs without it, bit for bit the base
model's; `save_pretrained` writes the base weights and the adapter so that the folder loads back the same."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from modeling_harmon import HarmonConfig, HarmonForConditionalGeneration


TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model, tokenizer):
    """(base folder without an adapter, folder with a random LoRA + embedding-copy adapter in `reading/`)."""
    root = tmp_path_factory.mktemp("adapter")
    base, adapted = root / "base", root / "adapted"
    for folder in (base, adapted):
        tiny_model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    peft_model = get_peft_model(
        HarmonForConditionalGeneration.from_pretrained(base),
        LoraConfig(
            r=4, lora_alpha=8, target_modules=TARGETS, modules_to_save=["embed_tokens"], init_lora_weights=False
        ),
    )
    with torch.no_grad():  # the embedding copy must differ from the base table for the test to see it
        copy = peft_model.base_model.model.model.language_model.embed_tokens.modules_to_save["default"]
        copy.weight.add_(torch.randn_like(copy.weight))
    peft_model.save_pretrained(adapted / "reading")
    config = HarmonConfig.from_pretrained(adapted)
    config.understanding_adapter = "reading"
    config.save_pretrained(adapted)
    return base, adapted


@pytest.fixture(scope="module")
def models(folders):
    base, adapted = folders
    return (
        HarmonForConditionalGeneration.from_pretrained(base).eval(),
        HarmonForConditionalGeneration.from_pretrained(adapted).eval(),
    )


def _question(model, tokenizer):
    ids = tokenizer("what shape is it?", return_tensors="pt").input_ids
    return model(input_ids=ids).logits


def _draw(model, tokenizer, **kwargs):
    generator = torch.Generator().manual_seed(3)
    return model.generate_images(
        prompt=["a red circle", "two squares"],
        tokenizer=tokenizer,
        num_iter=2,
        num_sampling_steps=3,
        generator=generator,
        **kwargs,
    ).images


def test_loads_the_adapter_the_config_names(models, folders):
    _, adapted = models
    assert adapted.active_adapters() == ["understanding"]
    plain = HarmonForConditionalGeneration.from_pretrained(folders[1], understanding_adapter=None)
    assert not getattr(plain, "peft_config", None)
    assert plain.config.understanding_adapter is None


def test_understanding_uses_the_adapter(models, tokenizer):
    base, adapted = models
    with torch.no_grad():
        assert not torch.allclose(_question(base, tokenizer), _question(adapted, tokenizer), atol=1e-3)


def test_drawing_is_the_base_model_bit_for_bit(models, tokenizer):
    base, adapted = models
    assert torch.equal(_draw(base, tokenizer), _draw(adapted, tokenizer))
    # the switch is put back: understanding after a drawing still reads with the adapter
    with torch.no_grad():
        assert not torch.allclose(_question(base, tokenizer), _question(adapted, tokenizer), atol=1e-3)
    assert all(not layer._disable_adapters for layer in _layers(adapted))


def test_the_text_to_image_loss_is_the_base_model_s(models, tokenizer):
    base, adapted = models
    ids = tokenizer(["a red circle"], return_tensors="pt")
    pixels = torch.rand(1, 3, base.config.image_size, base.config.image_size) * 2 - 1
    losses = []
    for model in (base, adapted):
        torch.manual_seed(5)
        with torch.no_grad():
            losses.append(model(**ids, pixel_values=pixels, generation_targets=True).loss)
    assert torch.equal(losses[0], losses[1])


def test_save_writes_the_base_weights_and_the_adapter(models, folders, tokenizer, tmp_path):
    _, adapted = models
    adapted.save_pretrained(tmp_path / "out")
    written = load_file(tmp_path / "out" / "model.safetensors")
    original = load_file(folders[1] / "model.safetensors")
    assert written.keys() == original.keys()
    assert all(torch.equal(written[key], original[key]) for key in original)
    adapter = load_file(tmp_path / "out" / "reading" / "adapter_model.safetensors")
    source = load_file(folders[1] / "reading" / "adapter_model.safetensors")
    assert adapter.keys() == source.keys()
    assert all(torch.equal(adapter[key], source[key]) for key in source)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["understanding_adapter"] == "reading"
    assert (
        json.loads((tmp_path / "out" / "reading" / "adapter_config.json").read_text())["base_model_name_or_path"]
        is None
    )
    reloaded = HarmonForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.equal(_question(reloaded, tokenizer), _question(adapted, tokenizer))
    assert torch.equal(_draw(reloaded, tokenizer), _draw(adapted, tokenizer))


def test_refusals_name_the_problem(models, folders, tmp_path):
    _, adapted = models
    with pytest.raises(ValueError, match="push_to_hub"):
        adapted.save_pretrained(tmp_path / "x", push_to_hub=True)
    with pytest.raises(ValueError, match="understanding_adapter must be None or a subfolder"):
        HarmonConfig(understanding_adapter="../elsewhere")
    broken = tmp_path / "broken"
    HarmonForConditionalGeneration.from_pretrained(folders[0]).save_pretrained(broken)
    config = HarmonConfig.from_pretrained(broken)
    config.understanding_adapter = "missing"
    config.save_pretrained(broken)
    with pytest.raises(OSError, match="missing/adapter_config.json"):
        HarmonForConditionalGeneration.from_pretrained(broken)


def _layers(model):
    from modeling_harmon.modeling_harmon_adapters import _adapter_layers

    return _adapter_layers(model)


def test_export_default_keeps_a_runs_adapter_and_draws_as_the_base(tmp_path):
    """`export_default --understanding-adapter RUN`: the folder grows the vocabulary as the run did (<unk> rows),
    keeps the adapter, draws what the plain export draws (a prompt with new words too), and reads with the adapter."""
    from harmon_pipelines.default_model import load_model_and_tokenizer
    from tests.conftest import small_shapes_config, wake_zero_initialised
    from training.model_init import load_model
    from training.shapes.export_default import export
    from training.shapes.make_data import build_tokenizer

    plain, extended = build_tokenizer(), build_tokenizer(extended=True)
    config = small_shapes_config(plain)
    torch.manual_seed(0)

    wake_zero_initialised(HarmonForConditionalGeneration(config)).save_pretrained(tmp_path / "stage3")
    plain.save_pretrained(tmp_path / "stage3")
    extended.save_pretrained(tmp_path / "tokenizer")
    grown, _ = load_model(
        {
            "init": "pretrained",
            "path": str(tmp_path / "stage3"),
            "tokenizer": str(tmp_path / "tokenizer"),
            "new_token_init": "unk",
        }
    )
    run = get_peft_model(
        grown,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=TARGETS, modules_to_save=["embed_tokens"], init_lora_weights=False
        ),
    )
    run.save_pretrained(tmp_path / "run")
    extended.save_pretrained(tmp_path / "run")

    export(str(tmp_path / "stage3"), tmp_path / "base", None, num_iter=2)
    tasks = ["text2image", "image2text", "edit"]
    adapter = str(tmp_path / "run")
    export(
        str(tmp_path / "stage3"),
        tmp_path / "adapted",
        None,
        understanding_adapter=adapter,
        trained_tasks=tasks,
        num_iter=2,
    )
    assert (tmp_path / "adapted" / "understanding_adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "adapted" / "config.json").read_text())["trained_tasks"] == tasks
    base, base_tokenizer = load_model_and_tokenizer(tmp_path / "base")
    adapted, tokenizer = load_model_and_tokenizer(tmp_path / "adapted")
    assert adapted.active_adapters() == ["understanding"] and len(tokenizer) == len(extended)
    prompts = ["a red circle", "a red circle and a blue square"]  # "and" is a new word: <unk> to the base
    settings = {"num_iter": 2, "num_sampling_steps": 3}
    drawn = [
        model.generate_images(
            prompt=prompts, tokenizer=words, generator=[torch.Generator().manual_seed(i) for i in range(2)], **settings
        ).images
        for model, words in ((base, base_tokenizer), (adapted, tokenizer))
    ]
    assert torch.equal(*drawn)
    ids = base_tokenizer("what shape is it?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, adapted(input_ids=ids).logits[..., : len(plain)])

    # prompt_mode "auto" restates only the prompts with a word the drawing path never learned ("and": an <unk> row)
    unlearned = adapted.unlearned_token_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids("and") in unlearned
    assert not {tokenizer.unk_token_id, tokenizer.convert_tokens_to_ids("circle")} & unlearned
    asked = []

    def restate(prompt, **_):
        asked.extend(prompt)
        return ["a red circle to the left of a blue square"] * len(prompt)

    adapted.describe_prompts = restate
    assert adapted.restate_prompts(prompts, "auto", tokenizer=tokenizer) == [
        "a red circle",
        "a red circle to the left of a blue square",
    ]
    assert asked == ["a red circle and a blue square"]
    assert adapted.restate_prompts(prompts, "direct", tokenizer=tokenizer) == prompts
    assert adapted.restate_prompts(["a red dog"], "auto", tokenizer=tokenizer) == ["a red dog"]  # <unk>: not asked
    assert asked == ["a red circle and a blue square"]
    adapted.describe_prompts = lambda prompt, **_: [""] * len(prompt)  # wrote nothing: drawn as given
    assert adapted.restate_prompts(prompts, "auto", tokenizer=tokenizer) == prompts


def test_the_hub_layout_carries_the_adapter_to_every_loader(models, tokenizer, tmp_path):
    """`write_hub_files`: the adapter at the root and in the diffusers model component, which `HarmonPipeline` loads;
    `check_hub_folder` names a missing adapter file."""
    from harmon_pipelines import HarmonPipeline
    from harmon_pipelines.hub import check_hub_folder, write_hub_files

    _, adapted = models
    folder = write_hub_files(tmp_path / "hub", adapted, tokenizer)
    assert check_hub_folder(folder) == []
    assert (folder / "model" / "reading" / "adapter_model.safetensors").is_file()
    pipe = HarmonPipeline.from_pretrained(folder)
    assert pipe.model.active_adapters() == ["understanding"]
    with torch.no_grad():
        assert torch.equal(_question(pipe.model, tokenizer), _question(adapted, tokenizer))
    (folder / "model" / "reading" / "adapter_model.safetensors").unlink()
    (folder / "reading" / "adapter_config.json").unlink()
    problems = check_hub_folder(folder)
    assert "missing reading/adapter_config.json (config.understanding_adapter)" in problems
    assert (
        "model/reading/adapter_model.safetensors is missing or differs from the root reading/adapter_model.safetensors"
        in problems
    )
