"""Training examples: one record of a source, and the sample's random generator, become token ids, labels and pixels.

* text-to-image (`t2i`): the chat-formatted `Generate an image: {caption}` prompt (the unconditional prompt with
  probability `caption_dropout`, which classifier-free guidance needs) and a random square crop of the image.
* captions (`caption`): `<image>\\n{a random dense caption prompt}` answered by the caption.
* visual question answering (`vqa`): a LLaVA conversation about the image.
* text (`text`): a chat conversation.
* instruction editing (`edit`): the text-to-image prompt of the instruction with the source image(s) before it, as
  `HarmonForConditionalGeneration.generate_images(prompt, context_images=...)` builds it (the processor's
  `format_text_to_image_prompt(instruction, num_images=k)`, its `<image>` placeholders expanded by the processor
  with the images), and the target image to generate. Condition dropout (`edit_dropout`, InstructPix2Pix's 5 % each
  by default) replaces the prompt by one of the other rows of two-scale guidance, drawn exclusively:

  | dropped (probability) | prompt                                        | context images | sampling row            |
  |-----------------------|-----------------------------------------------|----------------|-------------------------|
  | nothing (the rest)    | `format_text_to_image_prompt(instruction, k)` | the k sources  | text + images           |
  | `text`                | `format_text_to_image_prompt(None, k)`        | the k sources  | unconditional + images  |
  | `both`                | `format_text_to_image_prompt(None)`           | none           | unconditional, no image |
  | `image`               | `format_text_to_image_prompt(instruction)`    | none           | (text-to-image prompt)  |

  The first three are exactly the rows `generate_images` runs with `guidance_scale` and `image_guidance_scale`
  (without a negative prompt); the fourth is the plain text-to-image prompt, which InstructPix2Pix also trains so
  that the text alone stays meaningful. Sources and target are padded to a square and resized by the image
  processor, as sampling prepares a context image, so target and first source stay pixel-aligned (no random crop).

Every random choice is drawn from the generator passed in, which the stream seeds per sample, so a sample is the same
on every run and after a resume.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .chat import ChatEncoder
from .images import check_size, read_image, square_crop
from .skips import BAD_ASPECT, BAD_RECORD, TOO_LONG, UNREADABLE_IMAGE, SkipSample
from .sources import KIND_TO_TASK


# Instructions that turn a caption into an image-to-text example; one is drawn per sample, so the model learns to
# describe images in detail whatever the wording of the request.
DENSE_CAPTION_PROMPTS = (
    "Describe the image in detail.",
    "Give a thorough account of everything visible in this picture.",
    "What is shown in this image? Answer with a rich, detailed description.",
    "Write a long, detailed caption for this photograph.",
    "Walk me through the contents of this picture, one element at a time.",
    "Describe the scene, the objects in it and how they are arranged.",
    "Describe this image, covering its subjects, setting, colours and composition.",
    "Write a detailed paragraph about what this image contains.",
    "Tell me, as precisely as you can, what this picture depicts.",
    "Explain what a viewer would notice when looking closely at this image.",
)
# Condition dropout of edit samples (exclusive draws): InstructPix2Pix's 5 % text, 5 % image, 5 % both.
DEFAULT_EDIT_DROPOUT = {"text": 0.05, "image": 0.05, "both": 0.05}
# LLaVA speaker names and chat roles, mapped onto the chat template's roles.
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Example:
    """One training sample: `input_ids` and, by task, `labels` (-100 = no loss), `pixel_values` (3, S, S) in [-1, 1]
    or cached `latents` (rows, cols, D); an `edit` sample also has `context_pixel_values` (k, 3, S, S), the images its
    prompt's placeholders stand for (None when its images were dropped), and a `distill` sample (which may have them
    too) the token ids of its teacher's text-to-image prompt."""

    input_ids: list[int]
    labels: list[int] | None = None
    pixel_values: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    context_pixel_values: torch.Tensor | None = None
    teacher_input_ids: list[int] | None = None  # a `distill` sample's teacher prompt


def to_messages(turns: object) -> list[dict]:
    """Chat messages `{"role", "content"}` from LLaVA `{"from", "value"}` or chat `{"role", "content"}` turns.

    Raises `SkipSample` (`bad_record`) unless the turns are a list of known speakers with string contents, holding an
    assistant answer and not starting with one.
    """
    if isinstance(turns, Mapping):  # a `datasets.Sequence` of turns reads back as columns of values
        turns = [dict(zip(turns, values, strict=True)) for values in zip(*turns.values())]
    if not isinstance(turns, list) or not turns:
        raise SkipSample(BAD_RECORD, f"the conversation must be a non-empty list of turns, got {turns!r:.200}.")
    messages = []
    for turn in turns:
        if not isinstance(turn, Mapping):
            raise SkipSample(BAD_RECORD, f"a conversation turn must be an object, got {turn!r:.200}.")
        role = turn.get("role") or turn.get("from")
        content = turn.get("content") if turn.get("content") is not None else turn.get("value")
        if role not in ROLES or not isinstance(content, str):
            raise SkipSample(
                BAD_RECORD,
                f"a turn needs a role in {tuple(ROLES)} and a string content, got {dict(turn)!r:.200}.",
            )
        messages.append({"role": ROLES[role], "content": content})
    roles = [message["role"] for message in messages]
    if "user" not in roles or "assistant" not in roles or roles[0] == "assistant":
        raise SkipSample(
            BAD_RECORD, f"the conversation must have a user prompt and an assistant answer, got roles {roles}."
        )
    return messages


def caption_messages(prompt: str, caption: str) -> list[dict]:
    """A caption sample as chat messages: the image and `prompt` from the user, `caption` as the answer (the user turn
    renders as `<image>\n{prompt}`, as the processor formats an image and a question at inference)."""
    return [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": caption},
    ]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Target and first source whose aspect ratios differ by more than this fraction are not a pixel-aligned edit pair.
ALIGNMENT_TOLERANCE = 0.02


def check_edit_dropout(dropout: object) -> None:
    """`edit_dropout` must map `text`, `image` and `both` to probabilities summing to at most 1."""
    keys = tuple(DEFAULT_EDIT_DROPOUT)
    if (
        not isinstance(dropout, Mapping)
        or set(dropout) != set(keys)
        or not all(_is_number(dropout[key]) and 0 <= dropout[key] <= 1 for key in keys)
        or sum(dropout[key] for key in keys) > 1 + 1e-9
    ):
        raise ValueError(
            f"edit_dropout must map {keys} to probabilities summing to at most 1 (exclusive draws), got {dropout!r}."
        )


class ExampleBuilder:
    r"""
    Builds the [`Example`] of a record.

    Args:
        processor: a `HarmonProcessor` (chat template, tokenizer, image processor, text-to-image prompts).
        model_config: the `HarmonConfig` trained (placeholders per image, `<image>` and end-of-turn token ids).
        image_size (`int`): square side of training images in pixels, a multiple of the model's token stride.
        max_length (`int`): longest image-to-text or text sequence in tokens, image placeholders included.
        t2i_max_length (`int`): longest text-to-image prompt in tokens; long captions are shortened, never the template.
        caption_dropout (`float`): probability that a text-to-image sample gets the unconditional prompt.
        min_image_side (`int`), max_aspect_ratio (`float`): images with a shorter side or a more extreme aspect ratio
            (outside (1 / max, max)) are skipped.
        kinds (`tuple[str]`): the source kinds that will be built; the lengths they need are checked here.
        caption_prompts (`tuple[str]`): instructions for caption samples, one drawn per sample.
        edit_dropout (`dict[str, float]`): probabilities that an edit sample drops its instruction (`text`), its
            images (`image`) or both (`both`); exclusive draws, so they must sum to at most 1 (see the module
            docstring for the prompts they give).
    """

    def __init__(
        self,
        processor,
        model_config,
        *,
        image_size: int,
        max_length: int,
        t2i_max_length: int,
        caption_dropout: float,
        min_image_side: int,
        max_aspect_ratio: float,
        kinds: tuple[str, ...] = tuple(KIND_TO_TASK),
        caption_prompts: tuple[str, ...] = DENSE_CAPTION_PROMPTS,
        edit_dropout: Mapping[str, float] | None = None,
    ) -> None:
        stride = model_config.vae_stride * model_config.patch_size
        for name, value, minimum in (
            ("image_size", image_size, stride),
            ("max_length", max_length, 1),
            ("t2i_max_length", t2i_max_length, 1),
            ("min_image_side", min_image_side, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
        if image_size % stride:
            raise ValueError(
                f"image_size must be a multiple of the model's token stride ({stride} px), got {image_size}."
            )
        if not _is_number(caption_dropout) or not 0 <= caption_dropout <= 1:
            raise ValueError(f"caption_dropout must be a probability in [0, 1], got {caption_dropout!r}.")
        if not _is_number(max_aspect_ratio) or not max_aspect_ratio > 1:
            raise ValueError(f"max_aspect_ratio must be a number > 1, got {max_aspect_ratio!r}.")
        edit_dropout = dict(DEFAULT_EDIT_DROPOUT if edit_dropout is None else edit_dropout)
        check_edit_dropout(edit_dropout)
        if not caption_prompts or not all(isinstance(prompt, str) and prompt for prompt in caption_prompts):
            raise ValueError(
                f"caption_prompts must be a non-empty tuple of non-empty strings, got {caption_prompts!r}."
            )
        if processor.image_token_id != model_config.image_token_id:
            raise ValueError(
                f"the processor's image token id ({processor.image_token_id}) differs from the model's image_token_id "
                f"({model_config.image_token_id}); build the processor from the model's tokenizer."
            )
        self.num_placeholders = model_config.num_image_placeholders(image_size, image_size)
        if processor.image_processor.num_image_placeholders(image_size, image_size) != self.num_placeholders:
            raise ValueError(
                f"the processor gives {processor.image_processor.num_image_placeholders(image_size, image_size)} "
                f"placeholders per {image_size}-px image but the model needs {self.num_placeholders}; build it with "
                f"HarmonProcessor.from_model_config."
            )
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.image_size, self.t2i_max_length, self.caption_dropout = image_size, t2i_max_length, caption_dropout
        self.min_image_side, self.max_aspect_ratio = min_image_side, max_aspect_ratio
        self.caption_prompts = tuple(caption_prompts)
        self.max_length, self.edit_dropout = max_length, edit_dropout
        self.chat = ChatEncoder(processor, model_config.eos_token_id, max_length)
        if {"t2i", "edit", "distill"} & set(kinds):
            template = max(len(self._encode(processor.format_text_to_image_prompt(text))) for text in ("", None))
            if template > t2i_max_length:
                raise ValueError(
                    f"t2i_max_length ({t2i_max_length}) must hold the text-to-image prompt template, which takes "
                    f"{template} tokens without a caption."
                )
        shortest = {
            "caption": caption_messages(max(self.caption_prompts, key=len), "."),
            "vqa": [{"role": "user", "content": processor.image_token}, {"role": "assistant", "content": "."}],
        }
        for kind in (kind for kind in shortest if kind in kinds):
            try:
                self.chat.encode(shortest[kind], self.num_placeholders)
            except SkipSample as skip:
                raise ValueError(
                    f"max_length ({max_length}) cannot hold a {kind} sample with its {self.num_placeholders} image "
                    f"placeholders (image_size {image_size}): {skip}"
                ) from None
        if "edit" in kinds:
            length = self._expanded_length(processor.format_text_to_image_prompt("", num_images=1), 1)
            if length > max_length:
                raise ValueError(
                    f"max_length ({max_length}) cannot hold an edit prompt with one source image: it takes {length} "
                    f"tokens with its {self.num_placeholders} image placeholders (image_size {image_size})."
                )

    def build(self, kind: str, record: dict, rng: np.random.Generator, cached=None) -> Example:
        """The example of `record` from a source of `kind` (`KIND_TO_TASK`); `cached` = `(latents, (width, height))`
        of a `t2i` image from a latents cache, used instead of the image. Raises `SkipSample` for unusable records."""
        if kind not in KIND_TO_TASK:
            raise ValueError(f"kind must be one of {tuple(KIND_TO_TASK)}, got {kind!r}.")
        if kind == "t2i":
            return self.text_to_image(record, rng, cached)
        if kind == "caption":
            return self.caption(record, rng)
        if kind == "vqa":
            return self.visual_question_answering(record)
        if kind == "edit":
            return self.edit(record, rng)
        if kind == "distill":
            return self.distill(record)
        return self.text(record)

    # ------------------------------------------------------------------------------------------------ helpers
    def _encode(self, text: str) -> list[int]:
        # As the pipeline tokenises prompts at inference (special tokens included).
        return self.tokenizer(text)["input_ids"]

    def _caption(self, record: dict, rng: np.random.Generator) -> str:
        """The record's caption; of a list of captions, a random one."""
        return self._one_text(record["text"], rng, "caption")

    @staticmethod
    def _one_text(text: object, rng: np.random.Generator, what: str) -> str:
        """`text` stripped; of a list of texts, a random one. An empty or non-string one is a bad record."""
        if isinstance(text, (list, tuple)) and text:
            text = text[int(rng.integers(len(text)))]
        if not isinstance(text, str) or not text.strip():
            raise SkipSample(BAD_RECORD, f"the {what} must be a non-empty string, got {text!r:.200}.")
        return text.strip()

    def _expanded_length(self, prompt: str, num_images: int) -> int:
        """Tokens of `prompt` once each of its `num_images` placeholders is expanded to one image's placeholders."""
        return len(self._encode(prompt)) + num_images * (self.num_placeholders - 1)

    def _read_image(self, value: object):
        return read_image(value, self.min_image_side, self.max_aspect_ratio)

    # ------------------------------------------------------------------------------------------------ text-to-image
    def text_to_image_prompt_ids(self, caption: str | None) -> list[int]:
        """Token ids of the text-to-image prompt of `caption` (None: unconditional), at most `t2i_max_length` long.

        A long caption is shortened token by token; the template, and in particular its assistant header that the
        image follows, is kept whole (the reference truncates the templated prompt and loses the header).
        """
        return self._fitted_caption(caption)[1]

    def _fitted_caption(self, caption: str | None) -> tuple[str | None, list[int]]:
        """(`caption`, shortened so its text-to-image prompt fits `t2i_max_length`; that prompt's token ids)."""
        ids = self._encode(self.processor.format_text_to_image_prompt(caption))
        if len(ids) <= self.t2i_max_length or caption is None:
            return caption, ids
        offsets = self.tokenizer(caption, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        keep, shorter = len(offsets), caption
        while len(ids) > self.t2i_max_length and keep:
            # Tokens can merge across the cut, so re-tokenise until it fits; with no caption left it fits (checked).
            keep = max(0, keep - (len(ids) - self.t2i_max_length))
            shorter = caption[: offsets[keep - 1][1]] if keep else ""
            ids = self._encode(self.processor.format_text_to_image_prompt(shorter))
        return shorter, ids

    def text_to_image(self, record: dict, rng: np.random.Generator, cached=None) -> Example:
        caption = self._caption(record, rng)
        if cached is None:
            image = self._read_image(record["image"])
        else:
            latents, (width, height) = cached
            check_size(width, height, self.min_image_side, self.max_aspect_ratio)
        prompt = None if rng.random() < self.caption_dropout else caption
        input_ids = self.text_to_image_prompt_ids(prompt)
        if cached is not None:
            return Example(input_ids, latents=latents)
        return Example(input_ids, pixel_values=square_crop(image, self.image_size, rng))

    # ------------------------------------------------------------------------------------------------ image-to-text
    def caption(self, record: dict, rng: np.random.Generator) -> Example:
        caption = self._caption(record, rng)
        prompt = self.caption_prompts[int(rng.integers(len(self.caption_prompts)))]
        return self._image_to_text(caption_messages(prompt, caption), record["image"])

    def visual_question_answering(self, record: dict) -> Example:
        """A conversation about the image. It must hold at most one image token; without one, the image goes first
        in the first user turn (as LLaVA places it)."""
        messages = to_messages(record["messages"])
        image_token = self.processor.image_token
        count = sum(message["content"].count(image_token) for message in messages)
        if count > 1:
            raise SkipSample(BAD_RECORD, f"the conversation holds {count} {image_token} tokens; one image per sample.")
        if count == 0:
            first = next(message for message in messages if message["role"] == "user")
            first["content"] = f"{image_token}\n{first['content']}"
        return self._image_to_text(messages, record["image"])

    def _image_to_text(self, messages: list[dict], stored_image: object) -> Example:
        input_ids, labels = self.chat.encode(
            messages, self.num_placeholders
        )  # first: a too-long sample reads no image
        image = self._read_image(stored_image)
        try:
            pixels = self.processor.image_processor(image, size=self.image_size, return_tensors="pt")
        except ValueError as error:  # e.g. over the image processor's max_pixels when PIL's own limit is lifted
            raise SkipSample(UNREADABLE_IMAGE, f"the image processor refused the image: {error}") from None
        return Example(input_ids, labels, pixel_values=pixels["pixel_values"][0])

    # ------------------------------------------------------------------------------------------------ editing
    def edit_condition(self, rng: np.random.Generator) -> str:
        """One draw of the edit condition dropout: `keep`, `text`, `image` or `both` (what is dropped)."""
        draw, edge = rng.random(), 0.0
        for dropped in ("text", "image", "both"):
            edge += self.edit_dropout[dropped]
            if draw < edge:
                return dropped
        return "keep"

    def edit_prompt(self, instruction: str | None, num_images: int) -> str:
        """The prompt text of an edit row: the instruction (None: the unconditional text) after `num_images` image
        placeholders, as `generate_images(prompt, context_images=...)` formats it."""
        return self.processor.format_text_to_image_prompt(instruction, num_images=num_images)

    def edit(self, record: dict, rng: np.random.Generator) -> Example:
        """An edit sample (see the module docstring): prompt ids with the kept sources' placeholders expanded,
        `context_pixel_values` = those sources and `pixel_values` = the target, both as the image processor makes
        them."""
        instruction = self._one_text(record["instruction"], rng, "instruction")
        sources = record["sources"]
        if not isinstance(sources, (list, tuple)) or not sources:
            raise SkipSample(BAD_RECORD, f"an edit needs a non-empty list of source images, got {sources!r:.200}.")
        dropped = self.edit_condition(rng)
        # The instruction is shortened as a text-to-image caption would be; the images come on top of that limit.
        instruction, _ = self._fitted_caption(instruction)
        # The full prompt (instruction and every source) must fit, whatever the draw, so that a record is used or
        # skipped independently of its dropout; checked first: a too-long sample reads no image.
        length = max(
            self._expanded_length(self.edit_prompt(text, len(sources)), len(sources)) for text in (instruction, None)
        )
        if length > self.max_length:
            raise SkipSample(
                TOO_LONG,
                f"the edit prompt with its {len(sources)} source images takes {length} tokens, more than max_length "
                f"{self.max_length}.",
            )
        kept = 0 if dropped in ("image", "both") else len(sources)
        prompt = self.edit_prompt(None if dropped in ("text", "both") else instruction, kept)
        # Every image is read and checked, dropped or not, so a broken record is skipped whatever the draw.
        images = [self._read_image(source) for source in sources]
        target = self._read_image(record["target"])
        (source_width, source_height), (width, height) = images[0].size, target.size
        if abs(math.log((source_width / source_height) / (width / height))) > math.log(1 + ALIGNMENT_TOLERANCE):
            raise SkipSample(
                BAD_ASPECT,
                f"the target ({width}x{height}) and the first source ({source_width}x{source_height}) differ in "
                "aspect ratio, so they cannot be aligned.",
            )
        return self._drawn_from(prompt, images if kept else [], target, self._encode(prompt) if not kept else None)

    def _drawn_from(self, prompt: str | None, images: list, target, ids_without_images: list[int] | None) -> Example:
        """The example of `target` drawn from a prompt: `ids_without_images` when there are no `images`, else `prompt`
        with its placeholders expanded by the processor and the images as `context_pixel_values`."""
        try:
            pixels = self.processor.image_processor(target, size=self.image_size, return_tensors="pt")
            if not images:
                return Example(ids_without_images, pixel_values=pixels["pixel_values"][0])
            inputs = self.processor(text=prompt, images=images, size=self.image_size, return_tensors="pt")
        except ValueError as error:  # as in `_image_to_text`
            raise SkipSample(UNREADABLE_IMAGE, f"the image processor refused an image: {error}") from None
        return Example(
            inputs["input_ids"][0].tolist(),
            pixel_values=pixels["pixel_values"][0],
            context_pixel_values=inputs["pixel_values"],
        )

    # ------------------------------------------------------------------------------------------------ distillation
    def distill(self, record: dict) -> Example:
        """A conditioning-distillation sample: the student's prompt (an edit prompt with the record's sources in
        view, or a text-to-image prompt without them; a None prompt is the unconditional text), the target image,
        and the teacher's text-to-image prompt ids (None: unconditional). No dropout is drawn: the records say
        which rows are unconditional, since each needs its own teacher prompt."""
        prompt, sources = record["prompt"], record["sources"]
        if prompt is not None:
            prompt, _ = self._fitted_caption(prompt.strip())
        teacher_prompt = record["teacher_prompt"]
        teacher = self.text_to_image_prompt_ids(None if teacher_prompt is None else teacher_prompt.strip())
        text = None
        if sources:
            text = self.edit_prompt(prompt, len(sources))
            length = self._expanded_length(text, len(sources))
            if length > self.max_length:
                raise SkipSample(
                    TOO_LONG,
                    f"the distill prompt with its {len(sources)} source images takes {length} tokens, more than "
                    f"max_length {self.max_length}.",
                )
        images = [self._read_image(source) for source in sources]
        target = self._read_image(record["target"])
        example = self._drawn_from(text, images, target, None if images else self.text_to_image_prompt_ids(prompt))
        example.teacher_input_ids = teacher
        return example

    # ------------------------------------------------------------------------------------------------ text
    def text(self, record: dict) -> Example:
        messages = to_messages(record["messages"])
        if any(self.processor.image_token in message["content"] for message in messages):
            raise SkipSample(
                BAD_RECORD, f"a text conversation must not hold the image token {self.processor.image_token}."
            )
        input_ids, labels = self.chat.encode(messages)
        return Example(input_ids, labels)
