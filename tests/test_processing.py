"""HarmonImageProcessor and HarmonProcessor: reference preprocessing, placeholder expansion, chat template, input
checks, saving, Hub remote code and the `image-text-to-text` pipeline, on the tiny random model."""

import copy
import json
import subprocess
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from modeling_harmon import HarmonConfig, HarmonImageProcessor, HarmonProcessor
from modeling_harmon.demo import answer

from .hub_utils import child_env, interpreters


QUESTION = "what color?"


def _random_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def _reference_pixels(image: Image.Image, side: int) -> torch.Tensor:
    """The reference preprocessing, written out: expand2square with grey, PIL bicubic resize, 2 * (x / 255) - 1."""
    image = image.convert("RGB")
    width, height = image.size
    if width != height:
        canvas = Image.new("RGB", (max(width, height),) * 2, (127, 127, 127))
        canvas.paste(image, ((max(width, height) - width) // 2, (max(width, height) - height) // 2))
        image = canvas
    array = np.asarray(image.resize((side, side), Image.BICUBIC))
    return (torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255) * 2 - 1


def _chat(image: Image.Image, question: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def _grey() -> float:
    """The padding colour after scaling, computed in float32 as the processor does."""
    return float((torch.tensor(127.0) / 255) * 2 - 1)


@pytest.fixture(scope="module")
def image_processor(processor) -> HarmonImageProcessor:
    return processor.image_processor


# ---------------------------------------------------------------------------------------------- image processor
def test_placeholder_counts_follow_size_stride_and_buffers(tiny_model, image_processor, processor):
    config = tiny_model.config
    assert image_processor.num_image_placeholders() == config.num_image_placeholders() == 8 * 8 + 4
    assert image_processor.num_image_placeholders(16, 32) == config.num_image_placeholders(16, 32) == 4 * 8 + 4
    default = HarmonImageProcessor()
    assert (default.vae_stride, default.buffer_size, default.size) == (16, 64, {"height": 512, "width": 512})
    assert default.num_image_placeholders() == 1088 and default.num_image_placeholders(256, 256) == 320
    assert HarmonConfig().num_image_placeholders(256, 256) == 320
    wide = processor(images=_random_image(9, 5), text="<image>hi", size={"height": 16, "width": 32})
    assert wide["pixel_values"].shape == (1, 3, 16, 32)
    assert int((wide["input_ids"] == processor.image_token_id).sum()) == 36


@pytest.mark.parametrize("width, height", [(37, 20), (20, 37), (33, 32), (32, 32), (7, 90)])
def test_square_size_equals_reference_exactly(image_processor, width, height):
    image = _random_image(width, height, seed=width)
    pixels = image_processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.dtype == torch.float32 and pixels.shape == (1, 3, 32, 32)
    assert torch.equal(pixels[0], _reference_pixels(image, 32))


def test_padding_to_a_non_square_aspect_is_centred_grey(image_processor):
    # Sizes chosen so that no resize happens: the padding alone is visible, pixel for pixel.
    tall = _random_image(8, 16, seed=1)
    pixels = image_processor(tall, size={"height": 16, "width": 32}, return_tensors="pt")["pixel_values"][0]
    inside = (torch.from_numpy(np.asarray(tall).copy()).permute(2, 0, 1).float() / 255) * 2 - 1
    assert torch.equal(pixels[:, :, 12:20], inside)
    assert bool((pixels[:, :, :12] == _grey()).all()) and bool((pixels[:, :, 20:] == _grey()).all())
    wide = _random_image(16, 9, seed=2)
    pixels = image_processor(wide, size=16, return_tensors="pt")["pixel_values"][0]
    assert bool((pixels[:, :3] == _grey()).all()) and bool((pixels[:, 12:] == _grey()).all())
    assert not bool((pixels[:, 3:12] == _grey()).all())


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "P", "CMYK", "I;16"])
def test_other_modes_are_converted_to_rgb(image_processor, mode):
    image = _random_image(20, 12, seed=3, mode=mode)
    expected = _reference_pixels(image.convert("RGB"), 32)
    assert torch.equal(image_processor(image, return_tensors="pt")["pixel_values"][0], expected)


def test_array_and_tensor_inputs_agree_with_pil(image_processor):
    image = _random_image(20, 12, seed=4)
    hwc = np.asarray(image).copy()
    expected = image_processor(image, return_tensors="pt")["pixel_values"]
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    inputs = [
        hwc,
        hwc.transpose(2, 0, 1),
        hwc.astype(np.float32) / 255,
        hwc.astype(np.int64),
        chw,
        chw.permute(1, 2, 0),
        chw.float() / 255,
        chw.to(torch.bfloat16) / 255,
    ]
    for value in inputs:
        assert torch.equal(image_processor(value, return_tensors="pt")["pixel_values"], expected), type(value)
    square = _random_image(32, 32, seed=5)  # no padding: each mode reaches the resize as it came
    for mode in ("L", "RGBA"):
        array = np.asarray(square.convert(mode)).copy()
        assert torch.equal(
            image_processor(array, return_tensors="pt")["pixel_values"],
            image_processor(square.convert(mode), return_tensors="pt")["pixel_values"],
        ), mode


def test_batches_keep_their_order(image_processor):
    images = [_random_image(20 + index, 12, seed=index) for index in range(3)]
    alone = torch.cat([image_processor(image, return_tensors="pt")["pixel_values"] for image in images])
    nested = image_processor([[images[0]], [images[1], images[2]]], return_tensors="pt")["pixel_values"]
    assert torch.equal(nested, alone)
    stacked = torch.stack(
        [torch.from_numpy(np.asarray(image.resize((20, 12))).copy()).permute(2, 0, 1) for image in images]
    )
    from_batch = image_processor(stacked, return_tensors="pt")["pixel_values"]
    assert torch.equal(from_batch, image_processor(list(stacked), return_tensors="pt")["pixel_values"])
    assert isinstance(image_processor(images[0])["pixel_values"], np.ndarray)


def test_postprocess_inverts_preprocess_on_8_bit_images(image_processor):
    image = _random_image(32, 32, seed=5)
    pixels = image_processor(image, return_tensors="pt")["pixel_values"]
    as_np = image_processor.postprocess(pixels, output_type="np")
    assert as_np.dtype == np.uint8 and np.array_equal(as_np[0], np.asarray(image))
    as_pt = image_processor.postprocess(pixels, output_type="pt")
    assert as_pt.dtype == torch.uint8 and as_pt.shape == (1, 3, 32, 32)
    (as_pil,) = image_processor.postprocess(pixels[0])
    assert as_pil.mode == "RGB" and np.array_equal(np.asarray(as_pil), np.asarray(image))
    clamped = image_processor.postprocess(torch.tensor([3.0, -2.0, 0.0]).view(1, 3, 1, 1), output_type="pt")
    assert clamped.flatten().tolist() == [255, 0, 128]


# ----------------------------------------------------------------------------------------------------- processor
def test_batched_text_is_left_padded_unless_asked(processor):
    texts = ["<image>a", "<image>a much longer question"]
    images = [_random_image(20, 12, seed=6), _random_image(12, 20, seed=7)]
    left = processor(images=images, text=texts)
    assert left["input_ids"].shape[0] == 2 and left["pixel_values"].shape == (2, 3, 32, 32)
    assert left["attention_mask"][0, 0] == 0 and bool(left["attention_mask"][:, -1].all())
    assert left["input_ids"][0, 0] == processor.tokenizer.pad_token_id
    right = processor(images=images, text=texts, padding_side="right")
    assert right["attention_mask"][0, -1] == 0 and bool(right["attention_mask"][:, 0].all())
    nested = processor(images=images, text=texts, text_kwargs={"padding_side": "right"})
    assert torch.equal(nested["input_ids"], right["input_ids"])


def test_chat_template_reproduces_the_reference_prompt(processor, tiny_model):
    config = tiny_model.config
    image = _random_image(20, 12)
    text = processor.apply_chat_template(_chat(image), add_generation_prompt=True)
    assert text == config.prompt_template.format(input=f"<image>\n{QUESTION}")
    assert text == "<|im_start|>user\n<image>\nwhat color?<|im_end|>\n<|im_start|>assistant\n"
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        {"role": "user", "content": [{"type": "text", "text": "and this?"}, {"type": "image"}]},
    ]
    assert processor.apply_chat_template(conversation) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nand this?\n<image><|im_end|>\n"
    )
    with pytest.raises(Exception, match="only image and text items"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "video"}]}])


def test_training_and_sampling_build_the_same_prompt_ids(processor, tiny_model, tokenizer):
    """One prompt format: the ids a training example holds for a caption (and for the unconditional prompt of
    caption dropout) are the ids `generate_images` feeds the LLM for that prompt (and for guidance's unconditional
    or negative rows), whether it is given the processor or only the tokenizer."""
    from harmon_training.data.examples import ExampleBuilder

    builder = ExampleBuilder(
        processor,
        tiny_model.config,
        image_size=32,
        max_length=256,
        t2i_max_length=128,
        caption_dropout=0.0,
        min_image_side=8,
        max_aspect_ratio=10.0,
    )
    for caption in ["a red circle", "  two big yellow triangles at the top ", None]:
        expected = builder.text_to_image_prompt_ids(caption)
        for given in ({"tokenizer": tokenizer}, {"processor": processor}):
            ids, mask = tiny_model.tokenize_generation_prompts([caption], **given)
            assert ids[0].tolist() == expected and mask.all(), (caption, given)
    assert "Generate an image." in processor.format_text_to_image_prompt(None)
    # The guided batch: conditional rows, then the negative prompt's (or the unconditional prompt's) rows.
    settings = tiny_model.image_generation_settings(guidance_scale=2.0)
    for negative, expected in (("a blue square", "a blue square"), (None, None)):
        batch = tiny_model._prompt_batch(
            {
                "prompt": "a red circle",
                "input_ids": None,
                "attention_mask": None,
                "tokenizer": tokenizer,
                "processor": None,
            },
            {"prompt": negative, "input_ids": None, "attention_mask": None, "tokenizer": tokenizer, "processor": None},
            settings,
            1,
        )
        rows = [row[mask.bool()].tolist() for row, mask in zip(batch.input_ids, batch.attention_mask)]
        assert rows == [builder.text_to_image_prompt_ids("a red circle"), builder.text_to_image_prompt_ids(expected)]


def test_apply_chat_template_tokenized_inputs(processor):
    inputs = processor.apply_chat_template(
        _chat(_random_image(20, 12)), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values"} == set(processor.model_input_names)
    assert inputs["pixel_values"].shape == (1, 3, 32, 32) and inputs["pixel_values"].dtype == torch.float32
    placeholders = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert placeholders == processor.image_processor.num_image_placeholders()
    assert processor.decode(inputs["input_ids"][0]) == "user\n\nwhat color?\nassistant\n"
    with_specials = processor.batch_decode(inputs["input_ids"], skip_special_tokens=False)[0]
    assert with_specials.startswith("<|im_start|>user\n<image><image>")


def test_model_outputs_on_processor_inputs_equal_hand_built_inputs(processor, tiny_model, tokenizer):
    image = _random_image(37, 20, seed=8)
    inputs = processor.apply_chat_template(_chat(image), add_generation_prompt=True, tokenize=True, return_dict=True)
    pixels = _reference_pixels(image, 32)
    placeholders = "<image>" * tiny_model.config.num_image_placeholders()
    text = tiny_model.config.prompt_template.format(input=f"{placeholders}\n{QUESTION}")
    input_ids = torch.tensor([tokenizer(text)["input_ids"]])
    assert torch.equal(inputs["input_ids"], input_ids) and torch.equal(inputs["pixel_values"][0], pixels)
    with torch.no_grad():
        ours = tiny_model(**inputs).logits
        hand = tiny_model(input_ids=input_ids, pixel_values=pixels[None]).logits
        other_inputs = processor.apply_chat_template(
            _chat(_random_image(37, 20, seed=9)), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        other = tiny_model(**other_inputs).logits
    assert torch.equal(ours, hand)
    assert not torch.allclose(ours, other)  # the image matters
    generated = tiny_model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new_text = processor.decode(generated[0, inputs["input_ids"].shape[1] :])
    assert new_text == answer(tiny_model, tokenizer, pixels, QUESTION, max_new_tokens=4)


IMAGE = _random_image(20, 12)


def _truncating(p: HarmonProcessor):
    # A fast tokenizer keeps its last truncation setting (and would save it): truncate with a copy.
    return HarmonProcessor(p.image_processor, copy.deepcopy(p.tokenizer))


# case -> (call on the processor, expected message)
BAD_INPUTS = {
    "zero-size PIL": (lambda p: p.image_processor(Image.new("RGB", (0, 4))), r"images\[0\] is empty"),
    "zero-size array": (lambda p: p.image_processor(np.zeros((0, 4, 3), np.uint8)), r"images\[0\] is empty"),
    "too many pixels": (
        lambda p: p.image_processor([IMAGE, IMAGE], max_pixels=100),
        r"images\[0\] has 12 x 20 = 240 pixels, more than max_pixels \(100\)",
    ),
    "too many pixels (init)": (
        lambda p: HarmonImageProcessor(size=32, vae_stride=4, max_pixels=100)(IMAGE),
        "more than max_pixels",
    ),
    "non-path string": (
        lambda p: p.image_processor("not an image"),
        r"images\[0\] is the string 'not an image', which is neither",
    ),
    "dict": (lambda p: p.image_processor([IMAGE, {"pixels": 1}]), r"images\[1\] must be a PIL image.*got a dict"),
    "1-D array": (lambda p: p.image_processor(np.zeros(5)), r"images\[0\] must be an image of shape .* got .* \(5,\)"),
    "2 channels": (lambda p: p.image_processor(np.zeros((6, 6, 2), np.uint8)), r"images\[0\] must have 1 \(grey\), 3"),
    "NaN": (lambda p: p.image_processor(np.full((6, 6, 3), np.nan, np.float32)), r"images\[0\] contains NaN"),
    "floats in [-1, 1]": (
        lambda p: p.image_processor(np.full((6, 6, 3), -0.5, np.float32)),
        r"images\[0\] holds floats in \[-0.5, -0.5\], but float images must lie in \[0, 1\]",
    ),
    "ints above 255": (
        lambda p: p.image_processor(np.full((6, 6, 3), 300)),
        r"images\[0\] holds integers in \[300, 300\]",
    ),
    "empty batch": (lambda p: p.image_processor([]), "images must hold at least one image"),
    "unsupported option": (
        lambda p: p(images=IMAGE, text="<image>", do_normalize=False),
        r"unsupported arguments \['do_normalize'\]",
    ),
    "size not a multiple": (
        lambda p: HarmonImageProcessor(size=30, vae_stride=4),
        r"size must have .* multiples of vae_stride \(4\), got \{'height': 30",
    ),
    "call size not a multiple": (
        lambda p: p.image_processor(IMAGE, size={"height": 32, "width": 6}),
        "size must have",
    ),
    "size keys": (lambda p: p.image_processor(IMAGE, size={"shortest_edge": 32}), "size must be an int or a dict"),
    "placeholders without images": (
        lambda p: p(text="<image>\nhi"),
        r"text holds 1 <image> placeholders \(\[1\] per text\) but images holds 0",
    ),
    "images without placeholders": (
        lambda p: p(images=[IMAGE, IMAGE], text="hi"),
        "text holds 0 <image> placeholders",
    ),
    "too many images": (lambda p: p(images=[IMAGE, IMAGE], text="<image>"), "but images holds 2 images"),
    "images per text": (
        lambda p: p(images=[[IMAGE, IMAGE], []], text=["<image>", "<image>"]),
        r"\[1, 1\] <image> placeholders per text but images holds \[2, 0\]",
    ),
    "truncated image": (
        lambda p: _truncating(p)(images=IMAGE, text="<image>q", truncation=True, max_length=10),
        r"text\[0\] has 10 image placeholder tokens after tokenisation, expected 1 x 68; truncation",
    ),
    "text type": (lambda p: p(text=[1, 2]), "text must be a string or a non-empty list of strings"),
    "token type ids": (
        lambda p: p(text="hi", return_mm_token_type_ids=True),
        "does not support return_mm_token_type_ids",
    ),
    "postprocess type": (
        lambda p: p.image_processor.postprocess(torch.zeros(1, 3, 4, 4), output_type="latent"),
        "output_type must be one of",
    ),
    "postprocess shape": (
        lambda p: p.image_processor.postprocess(torch.zeros(1, 4, 4, 4)),
        r"images must be floats of shape \(B, 3, H, W\)",
    ),
    "prompt type": (lambda p: p.format_text_to_image_prompt(3), "prompt must be a string or None"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_raise_clear_errors(processor, case):
    call, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        call(processor)


def test_tokenizer_must_name_its_image_token(image_processor, tokenizer):
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    with pytest.raises(ValueError, match="tokenizer .* must have a named special token `image_token`"):
        HarmonProcessor(image_processor, plain)
    with pytest.raises(ValueError, match="generation_prompt must be a string with a"):
        HarmonProcessor(image_processor, tokenizer, generation_prompt="no field")


# -------------------------------------------------------------------------------------------- saving and loading
@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model, tokenizer, processor):
    """A checkpoint folder with model, tokenizer and processor, a test image, and the expected pipeline answer."""
    folder = tmp_path_factory.mktemp("processing") / "tiny-harmon"
    tiny_model.save_pretrained(folder)
    processor.save_pretrained(folder)
    image_path = folder.parent / "image.png"
    _random_image(37, 20, seed=10).save(image_path)
    inputs = processor.apply_chat_template(
        _chat(Image.open(image_path)), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    generated = tiny_model.generate(**inputs, max_new_tokens=4, do_sample=False)
    expected = {
        "inputs": inputs,
        "generated": generated,
        "text": processor.decode(generated[0, inputs["input_ids"].shape[1] :]),
    }
    return folder, image_path, expected


def test_saved_processor_files(saved):
    folder = saved[0]
    names = {path.name for path in folder.iterdir()}
    expected = {"processor_config.json", "chat_template.jinja", "image_processing_harmon.py", "processing_harmon.py"}
    assert expected <= names
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_harmon.HarmonProcessor"
    image_config = config["image_processor"]
    assert image_config["auto_map"]["AutoImageProcessor"] == "image_processing_harmon.HarmonImageProcessor"
    assert (image_config["vae_stride"], image_config["buffer_size"]) == (4, 4)
    assert image_config["size"] == {"height": 32, "width": 32}
    assert config["generation_prompt"] == "Generate an image: {prompt}"


def test_package_round_trip_needs_no_remote_code(saved, processor, tmp_path):
    from transformers import AutoImageProcessor, AutoProcessor

    folder, image_path, expected = saved
    loaded = AutoProcessor.from_pretrained(folder)
    assert type(loaded) is HarmonProcessor and type(loaded.image_processor) is HarmonImageProcessor
    assert type(AutoImageProcessor.from_pretrained(folder)) is HarmonImageProcessor
    assert loaded.chat_template == processor.chat_template
    inputs = loaded.apply_chat_template(
        _chat(str(image_path)), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(inputs[key], expected["inputs"][key]), key
    custom = HarmonProcessor(
        processor.image_processor,
        processor.tokenizer,
        generation_prompt="Draw: {prompt}",
        unconditional_prompt="Draw.",
    )
    custom.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert reloaded.format_text_to_image_prompt(None) == custom.format_text_to_image_prompt(None)
    assert "Draw: a cat" in reloaded.format_text_to_image_prompt("a cat")


def test_pipeline_with_the_package(saved):
    from transformers import pipeline

    folder, image_path, expected = saved
    answerer = pipeline("image-text-to-text", model=str(folder))
    result = answerer(text=_chat(Image.open(image_path)), max_new_tokens=4, generate_kwargs={"do_sample": False})
    assert result[0]["generated_text"][-1] == {"role": "assistant", "content": expected["text"]}
    # A plain question with one image (the pipeline passes it to the processor as it is): the placeholder is put in.
    plain = answerer(
        images=Image.open(image_path), text="What color is it?", max_new_tokens=4, generate_kwargs={"do_sample": False}
    )
    assert isinstance(plain[0]["generated_text"], str)


def test_one_image_without_a_placeholder_gets_one_before_the_question(processor):
    question = "What color is it?"
    assert torch.equal(
        processor(images=IMAGE, text=question)["input_ids"],
        processor(images=IMAGE, text=f"<image>\n{question}")["input_ids"],
    )
    chat = processor.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    expected = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True,
    )
    assert torch.equal(
        processor(images=IMAGE, text=chat)["input_ids"], processor(images=IMAGE, text=expected)["input_ids"]
    )
    batch = processor(images=[IMAGE, IMAGE], text=[question, "and the shape?"])
    assert (batch["input_ids"] == processor.image_token_id).sum(1).tolist() == [68, 68]


CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_harmon"] = None  # the pip package must not be importable: only the remote code
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoProcessor, pipeline

    folder, image_path, output = sys.argv[1:4]
    torch.set_num_threads(1)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    for part in (processor, processor.image_processor):
        assert type(part).__module__.startswith("transformers_modules"), type(part).__module__
    chat = [{"role": "user", "content": [{"type": "image", "path": image_path}, {"type": "text", "text": "what color?"}]}]
    inputs = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    answerer = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    assert type(answerer.model).__module__.startswith("transformers_modules"), type(answerer.model).__module__
    chat = [{"role": "user", "content": [{"type": "image", "image": Image.open(image_path)}, {"type": "text", "text": "what color?"}]}]
    reply = answerer(text=chat, max_new_tokens=4, generate_kwargs={"do_sample": False})
    ids = answerer(text=chat, max_new_tokens=4, generate_kwargs={"do_sample": False}, return_tensors=True)
    save_file({"generated": ids[0]["generated_token_ids"], **{key: inputs[key] for key in inputs}}, output + ".safetensors")
    with open(output + ".json", "w") as handle:
        json.dump(reply[0]["generated_text"][-1], handle)
    """
)


@pytest.mark.parametrize("python", interpreters())
def test_remote_code_processor_and_pipeline_in_fresh_process(saved, tmp_path, python):
    folder, image_path, expected = saved
    script, output = tmp_path / "load_processor.py", tmp_path / "out"
    script.write_text(CHILD)
    result = subprocess.run(
        [python, str(script), str(folder), str(image_path), str(output)],
        cwd=tmp_path,
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{python} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    tensors = load_file(f"{output}.safetensors")
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(tensors[key], expected["inputs"][key]), key
    assert torch.equal(tensors["generated"], expected["generated"][0])
    assert json.loads(output.with_suffix(".json").read_text()) == {"role": "assistant", "content": expected["text"]}
