"""Training examples: one record of a source, and the sample's random generator, become token ids, labels and pixels.

* text-to-image (`t2i`): the chat-formatted `Generate an image: {caption}` prompt (the unconditional prompt with
  probability `caption_dropout`, which classifier-free guidance needs) and a random square crop of the image.
* captions (`caption`): `<image>\\n{a random dense caption prompt}` answered by the caption.
* visual question answering (`vqa`): a LLaVA conversation about the image.
* text (`text`): a chat conversation.

Every random choice is drawn from the generator passed in, which the stream seeds per sample, so a sample is the same
on every run and after a resume.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .chat import ChatEncoder
from .images import check_size, read_image, square_crop
from .skips import BAD_RECORD, UNREADABLE_IMAGE, SkipSample
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
# LLaVA speaker names and chat roles, mapped onto the chat template's roles.
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Example:
    """One training sample: `input_ids` and, by task, `labels` (-100 = no loss), `pixel_values` (3, S, S) in [-1, 1]
    or cached `latents` (rows, cols, D)."""

    input_ids: list[int]
    labels: list[int] | None = None
    pixel_values: torch.Tensor | None = None
    latents: torch.Tensor | None = None


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
        self.chat = ChatEncoder(processor, model_config.eos_token_id, max_length)
        if "t2i" in kinds:
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
        return self.text(record)

    # ------------------------------------------------------------------------------------------------ helpers
    def _encode(self, text: str) -> list[int]:
        # As the pipeline tokenises prompts at inference (special tokens included).
        return self.tokenizer(text)["input_ids"]

    def _caption(self, record: dict, rng: np.random.Generator) -> str:
        """The record's caption; of a list of captions, a random one."""
        text = record["text"]
        if isinstance(text, (list, tuple)) and text:
            text = text[int(rng.integers(len(text)))]
        if not isinstance(text, str) or not text.strip():
            raise SkipSample(BAD_RECORD, f"the caption must be a non-empty string, got {text!r:.200}.")
        return text.strip()

    def _read_image(self, value: object):
        return read_image(value, self.min_image_side, self.max_aspect_ratio)

    # ------------------------------------------------------------------------------------------------ text-to-image
    def text_to_image_prompt_ids(self, caption: str | None) -> list[int]:
        """Token ids of the text-to-image prompt of `caption` (None: unconditional), at most `t2i_max_length` long.

        A long caption is shortened token by token; the template, and in particular its assistant header that the
        image follows, is kept whole (the reference truncates the templated prompt and loses the header).
        """
        ids = self._encode(self.processor.format_text_to_image_prompt(caption))
        if len(ids) <= self.t2i_max_length or caption is None:
            return ids
        offsets = self.tokenizer(caption, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        keep = len(offsets)
        while len(ids) > self.t2i_max_length and keep:
            # Tokens can merge across the cut, so re-tokenise until it fits; with no caption left it fits (checked).
            keep = max(0, keep - (len(ids) - self.t2i_max_length))
            shorter = caption[: offsets[keep - 1][1]] if keep else ""
            ids = self._encode(self.processor.format_text_to_image_prompt(shorter))
        return ids

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

    # ------------------------------------------------------------------------------------------------ text
    def text(self, record: dict) -> Example:
        messages = to_messages(record["messages"])
        if any(self.processor.image_token in message["content"] for message in messages):
            raise SkipSample(
                BAD_RECORD, f"a text conversation must not hold the image token {self.processor.image_token}."
            )
        input_ids, labels = self.chat.encode(messages)
        return Example(input_ids, labels)
