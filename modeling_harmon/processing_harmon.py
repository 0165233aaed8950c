"""Processor of Harmon: chat template, `<image>` placeholder expansion, tokenisation and image preprocessing.

Prompts hold one `<image>` per image; the processor expands each to the `(H / stride) * (W / stride) + buffer_size`
placeholder tokens that the model fills with visual features, exactly as the reference understanding script does.
"""

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import logging

from .configuration_harmon import DEFAULT_GENERATION_PROMPT, DEFAULT_UNCONDITIONAL_PROMPT
from .image_processing_harmon import HarmonImageProcessor, HarmonImageProcessorKwargs, flatten_images


logger = logging.get_logger(__name__)

# The reference's Qwen chat format with no default system prompt: a turn is `<|im_start|>{role}\n{content}<|im_end|>\n`
# and the items of a list content (`<image>` for an image) are joined by newlines, so an image and a question give
# `<image>\n{question}`.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{%- if item['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- else -%}{{- raise_exception('Harmon chat messages hold only image and text items, got ' + item['type']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Options that rely on the placeholder expansion of `ProcessorMixin.__call__` in newer transformers (offsets of the
# expanded text for assistant masks, marked control tokens, token-type ids). This processor expands placeholders
# itself, the same way on every supported version, and does not produce them.
UNSUPPORTED_OPTIONS = ("return_mm_token_type_ids", "return_text_replacement_offsets", "sanitize_control_tokens")


class HarmonProcessorKwargs(ProcessingKwargs, total=False):
    images_kwargs: HarmonImageProcessorKwargs
    # `_defaults` (rather than class attributes on the processor) is what every supported transformers reads.
    _defaults = {
        "text_kwargs": {"padding": True, "return_tensors": "pt"},
        "images_kwargs": {"return_tensors": "pt"},
    }


class HarmonProcessor(ProcessorMixin):
    r"""
    Builds Harmon's understanding inputs (`input_ids`, `attention_mask`, `pixel_values`) from images and text, and
    formats text-to-image prompts.

    Args:
        image_processor ([`HarmonImageProcessor`]): resizes images and says how many placeholders each needs.
        tokenizer ([`PreTrainedTokenizerBase`]): the LLM tokenizer; it must name its `<image>` token `image_token`
            (e.g. loaded with `extra_special_tokens={"image_token": "<image>"}`).
        chat_template (`str`, *optional*): Jinja chat template; defaults to the reference format, no system prompt.
        generation_prompt (`str`, *optional*): text-to-image instruction with a `{prompt}` field.
        unconditional_prompt (`str`, *optional*): the instruction used without a prompt (classifier-free guidance).
    """

    valid_processor_kwargs = HarmonProcessorKwargs

    def __init__(
        self,
        image_processor: HarmonImageProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        chat_template: str | None = None,
        generation_prompt: str = DEFAULT_GENERATION_PROMPT,
        unconditional_prompt: str = DEFAULT_UNCONDITIONAL_PROMPT,
    ) -> None:
        super().__init__(
            image_processor, tokenizer, chat_template=CHAT_TEMPLATE if chat_template is None else chat_template
        )
        self.image_token = getattr(tokenizer, "image_token", None)
        self.image_token_id = getattr(tokenizer, "image_token_id", None)
        if self.image_token is None or self.image_token_id is None:
            raise ValueError(
                f"tokenizer ({type(tokenizer).__name__}) must have a named special token `image_token` (load it with "
                f"extra_special_tokens={{'image_token': '<image>'}}); got image_token={self.image_token!r}."
            )
        if not isinstance(generation_prompt, str) or "{prompt}" not in generation_prompt:
            raise ValueError(f"generation_prompt must be a string with a {{prompt}} field, got {generation_prompt!r}.")
        if not isinstance(unconditional_prompt, str):
            raise ValueError(f"unconditional_prompt must be a string, got {unconditional_prompt!r}.")
        self.generation_prompt = generation_prompt
        self.unconditional_prompt = unconditional_prompt

    @classmethod
    def from_model_config(
        cls, config, tokenizer: PreTrainedTokenizerBase, image_size: int | None = None
    ) -> "HarmonProcessor":
        """The processor matching a [`HarmonConfig`]: square `image_size` (default `config.image_size`), the model's
        token stride (VAE stride x patch size), buffer size and text-to-image prompts."""
        size = config.image_size if image_size is None else image_size
        image_processor = HarmonImageProcessor(
            size={"height": size, "width": size},
            vae_stride=config.vae_stride * config.patch_size,
            buffer_size=config.buffer_size,
        )
        return cls(
            image_processor,
            tokenizer,
            generation_prompt=config.generation_prompt,
            unconditional_prompt=config.unconditional_prompt,
        )

    def __call__(
        self,
        images: object = None,
        text: str | list[str] | None = None,
        videos: None = None,
        audio: None = None,
        **kwargs,
    ) -> BatchFeature:
        r"""
        Preprocess `images` and tokenise `text`, expanding each `image_token` of the text to the placeholders of one
        image (images are matched to placeholders in order).

        Args:
            images: an image or a (nested, one list per text) list of images; see [`HarmonImageProcessor.preprocess`].
            text (`str` or `list[str]`): prompts holding one `<image>` per image, usually from `apply_chat_template`.
            kwargs: tokenizer and image-processor arguments (`padding`, `truncation`, `max_length`, `size`,
                `return_tensors`, ...). Batches are padded on the left unless `padding_side="right"` is passed, so
                that `generate` continues every prompt right after its last token.

        Returns:
            [`BatchFeature`] with `input_ids`, `attention_mask` (when `text` is given) and `pixel_values` (B_img, 3, H, W)
            in [-1, 1] (when `images` are given); torch tensors unless `return_tensors` says otherwise.
        """
        if videos is not None or audio is not None:
            raise ValueError("HarmonProcessor handles images and text only; got videos or audio.")
        if images is None and text is None:
            raise ValueError("Pass images, text, or both; got neither.")
        texts = None if text is None else self._check_text(text)
        # The tokenizer's own padding side (often "right") would otherwise override the default below.
        padding_side = kwargs.get("padding_side", kwargs.get("text_kwargs", {}).get("padding_side")) or "left"
        merged = self._merge_kwargs(HarmonProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs, images_kwargs = merged["text_kwargs"], merged["images_kwargs"]
        for name in UNSUPPORTED_OPTIONS:
            if text_kwargs.pop(name, None) or merged.get(name):
                raise ValueError(
                    f"HarmonProcessor does not support {name} (nor apply_chat_template's return_assistant_tokens_mask "
                    f"or sanitize_control_tokens, which request it)."
                )
        text_kwargs["padding_side"] = padding_side

        image_inputs = self.image_processor(images, **images_kwargs) if images is not None else {}
        if texts is None:
            return BatchFeature(dict(image_inputs), tensor_type=images_kwargs.get("return_tensors"))
        num_images = len(image_inputs["pixel_values"]) if images is not None else 0
        counts = [sample.count(self.image_token) for sample in texts]
        if num_images == len(texts) and not any(counts):
            texts, counts = self._with_image_placeholders(texts), [1] * len(texts)
        self._check_image_counts(images, texts, counts, num_images)

        per_image = 0
        if num_images:
            height, width = image_inputs["pixel_values"].shape[-2:]
            per_image = self.image_processor.num_image_placeholders(int(height), int(width))
            texts = [sample.replace(self.image_token, self.image_token * per_image) for sample in texts]
        text_inputs = self.tokenizer(texts, **text_kwargs)

        rows = text_inputs["input_ids"]
        rows = rows.tolist() if hasattr(rows, "tolist") else rows
        for index, (row, count) in enumerate(zip(rows, counts, strict=True)):
            found = list(row).count(self.image_token_id)
            if found != count * per_image:
                raise ValueError(
                    f"text[{index}] has {found} image placeholder tokens after tokenisation, expected {count} x "
                    f"{per_image}; truncation (max_length) must not cut an image."
                )
        return BatchFeature({**text_inputs, **image_inputs}, tensor_type=text_kwargs.get("return_tensors"))

    def _with_image_placeholders(self, texts: list[str]) -> list[str]:
        """One image per text and no placeholder anywhere (transformers' image-text-to-text pipeline passes a plain
        question so): put the image before each text's question, where the chat template puts it (after the user
        turn's header when the text is chat-formatted), and say so once."""
        logger.warning_once(
            f"HarmonProcessor: the text holds no {self.image_token} placeholder for its image; one was put before "
            f"the question. Use apply_chat_template with {{'type': 'image'}} items to place it yourself."
        )
        header = "<|im_start|>user\n"  # the user turn's opening in Harmon's chat template
        placed = []
        for sample in texts:
            at = sample.find(header) + len(header) if header in sample else 0
            placed.append(f"{sample[:at]}{self.image_token}\n{sample[at:]}")
        return placed

    @staticmethod
    def _check_text(text: object) -> list[str]:
        texts = [text] if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else None
        if not texts or not all(isinstance(sample, str) for sample in texts):
            raise ValueError(f"text must be a string or a non-empty list of strings, got {text!r:.200}.")
        return texts

    def _check_image_counts(self, images: object, texts: list[str], counts: list[int], num_images: int) -> None:
        """Each `image_token` needs exactly one image; with one image list per text, per text as well."""
        hint = (
            f"put one {self.image_token} where each image goes (the processor expands it), e.g. with "
            f"apply_chat_template and {{'type': 'image'}} content items"
        )
        if sum(counts) != num_images:
            raise ValueError(
                f"text holds {sum(counts)} {self.image_token} placeholders ({counts} per text) but images holds "
                f"{num_images} images; {hint}."
            )
        nested = isinstance(images, (list, tuple)) and len(images) == len(texts) and len(texts) > 1
        if nested and all(isinstance(sample, (list, tuple)) for sample in images):
            per_text = [sum(1 for _ in flatten_images(sample)) for sample in images]
            if per_text != counts:
                raise ValueError(
                    f"text holds {counts} {self.image_token} placeholders per text but images holds {per_text} images "
                    f"per text; {hint}."
                )

    def format_text_to_image_prompt(self, prompt: str | None, num_images: int = 0) -> str:
        """Chat-formatted text-to-image prompt (`generation_prompt` around `prompt.strip()`), ready to tokenise.

        `None` gives the unconditional prompt that classifier-free guidance pairs with every prompt. `num_images`
        context images (instruction editing) go before the instruction, each as one `image_token` placeholder, where
        the chat template puts the images of a question; the caller expands them with the images (`__call__`).
        """
        if prompt is None:
            instruction = self.unconditional_prompt
        elif isinstance(prompt, str):
            instruction = self.generation_prompt.format(prompt=prompt.strip())
        else:
            raise ValueError(f"prompt must be a string or None, got {type(prompt).__name__}.")
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
            raise ValueError(f"num_images must be an integer >= 0, got {num_images!r}.")
        content = [{"type": "image"}] * num_images + [{"type": "text", "text": instruction}]
        conversation = [{"role": "user", "content": content}]
        return self.apply_chat_template(conversation, add_generation_prompt=True)

    def batch_decode(self, *args, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Decode token id rows; chat markers and `<image>` placeholders are special tokens, hidden by default."""
        return self.tokenizer.batch_decode(*args, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, *args, skip_special_tokens: bool = True, **kwargs) -> str:
        """Decode one row of token ids; special tokens are hidden by default (see `batch_decode`)."""
        return self.tokenizer.decode(*args, skip_special_tokens=skip_special_tokens, **kwargs)


HarmonProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["HarmonProcessor"]
