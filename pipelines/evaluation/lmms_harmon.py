"""Harmon as an lmms-eval model (issue 23): `lmms-eval --model harmon --model_args pretrained=REPO --tasks pope,...`.

lmms-eval (0.7.x) finds the class through this package's entry point in the group `lmms_eval.models`
(`harmon = harmon_pipelines.evaluation.lmms_harmon:lmms_eval_manifest`), so installing this package next to
lmms-eval is all it takes; `pipelines/evaluation/lmms/install.sh` makes such a venv.

Each request is asked as `harmon ask` asks (the paper's understanding format, as the reference's `image2text.py`):
the checkpoint's processor and chat template with the request's images first and its text after
(`<|im_start|>user\\n<image>\\n{text}<|im_end|>\\n<|im_start|>assistant\\n`, no system prompt; a text that already
holds one `<image>` per image keeps them where they are), greedy decoding, the answer decoded without special tokens
and stripped. lmms-eval's `until` strings cut the answer, `max_new_tokens` bounds it; `do_sample` or a temperature
above 0 samples instead. Requests are answered in batches of `batch_size` (left-padded, as the processor pads).

`model_args` (all optional):
- `pretrained`: a Harmon folder or Hub repo id (default: the Shapes demo model embedded in this package);
- `revision`: a Hub revision of `pretrained`;
- `trust_remote_code`: passed to `AutoModel` / `AutoProcessor.from_pretrained` only when given (default: this
  package's classes load the checkpoint with `harmon ask`'s checks, and no code from it runs). transformers 5 still
  prefers a locally registered class to a checkpoint's code, and this package registers Harmon's, so the flag
  changes what runs only for a checkpoint whose `model_type` is not Harmon's;
- `device`: default `cuda:LOCAL_RANK` when CUDA is available, else `cpu`;
- `dtype`: default `bfloat16` on a GPU (the reference's precision), `float32` on the CPU (`harmon ask`'s default;
  pass `dtype=float32` on a GPU for `harmon ask`'s numbers there);
- `batch_size` (lmms-eval's `--batch_size`), `max_new_tokens` (when a task gives none; default 1024, the reference's).

The class does not need lmms-eval to be imported: without it, it is a plain class with the same methods, which
answers any object whose `args` hold lmms-eval's request tuple (the tests use it so).
"""

import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm


try:  # lmms-eval's base class (ABC with the request methods, rank and world size, task_dict, cache hook)
    from lmms_eval.api.model import lmms as _LMMSBase
except ImportError:  # lmms-eval is not installed: the same interface without it

    class _LMMSBase:
        is_simple = True

        def __init__(self) -> None:
            self._rank, self._world_size, self.task_dict = 0, 1, {}

        @property
        def rank(self) -> int:
            return self._rank

        @property
        def world_size(self) -> int:
            return self._world_size


MODEL_ID = "harmon"
# The folder holding lmms-eval task folders of this package (`--include_path`): `shapes_pope`.
TASKS_DIR = Path(__file__).resolve().parent / "lmms" / "tasks"
DEFAULT_MAX_NEW_TOKENS = 1024  # the reference's understanding script
IMAGE_TOKEN = "<image>"  # the placeholder when a processor does not name its own


def lmms_eval_manifest():
    """The payload of this package's `lmms_eval.models` entry point: registers this class as `--model harmon`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.HarmonLMMS")


def _as_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _positive_int(value, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


class HarmonLMMS(_LMMSBase):
    """lmms-eval's `harmon` model: Harmon's image understanding on lmms-eval's requests (see the module docstring)."""

    is_simple = True  # lmms-eval's "simple" interface: (context, gen_kwargs, doc_to_visual, doc_id, task, split)

    def __init__(
        self,
        pretrained: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"harmon: unknown model_args {sorted(kwargs)}; see {__name__}'s docstring")
        trust_remote_code = _as_bool(trust_remote_code, "trust_remote_code")
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            raise ValueError("harmon: --batch_size auto is not supported; pass a number")
        self.batch_size_per_gpu = _positive_int(batch_size, "batch_size")
        self.max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device is None or (str(device) == "cuda" and world_size > 1):
            # Processes launched together (accelerate, torchrun) take one GPU each.
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        if dtype is None or dtype == "auto":
            dtype = "bfloat16" if self._device.type == "cuda" else "float32"
        if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
            raise ValueError(f"harmon: dtype must name a torch dtype (float32, bfloat16, float16), got {dtype!r}")
        self._model, self._processor = load_harmon(
            pretrained, revision=revision, trust_remote_code=trust_remote_code, device=self._device, dtype=dtype
        )
        self.pretrained = pretrained
        if world_size > 1:
            self._rank, self._world_size = int(os.environ.get("RANK", 0)), world_size

    # ---------------------------------------------------------------------------------- what lmms-eval reads
    @property
    def model(self):
        return self._model

    @property
    def processor(self):
        return self._processor

    @property
    def tokenizer(self):
        return self._processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def chat_template(self) -> str | None:
        return self._processor.chat_template

    # ------------------------------------------------------------------------------------------- prompts
    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        """The images of one request (lmms-eval keeps the documents in `task_dict`; a document without images gives
        an empty list)."""
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else None
        visuals = [] if visuals is None else list(visuals)
        for visual in visuals:
            if not hasattr(visual, "convert"):
                raise ValueError(f"harmon answers about images only; task {task!r} gave a {type(visual).__name__}")
        return [visual.convert("RGB") for visual in visuals]

    def format_prompt(self, context: str, num_images: int) -> str:
        """The chat-formatted prompt of `context` with `num_images` images: the images first, then the text, as
        `harmon ask` builds it; a context that already holds one `<image>` per image keeps its own placement (other
        `<image>` strings are removed, so they cannot be taken for placeholders)."""
        placeholder = getattr(self._processor, "image_token", None) or IMAGE_TOKEN
        if num_images and context.count(placeholder) == num_images:
            content = [{"type": "text", "text": context}]
        else:
            content = [{"type": "image"}] * num_images + [{"type": "text", "text": context.replace(placeholder, "")}]
        return self._processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def _inputs(self, prompts: list[str], images: list[list]):
        flat = [image for row in images for image in row]
        inputs = self._processor(images=flat or None, text=prompts, return_tensors="pt").to(self._device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        return inputs

    # ------------------------------------------------------------------------------------------ generation
    def _generation_settings(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        """(`generate` keyword arguments, stop strings) of a request's `gen_kwargs`: greedy unless `do_sample` or a
        temperature above 0 asks for sampling; keys that only other models read (e.g. `image_aspect_ratio`) are
        ignored."""
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        if not all(isinstance(stop, str) for stop in until):
            raise ValueError(f"gen_kwargs['until'] must be a string or a list of strings, got {until!r}")
        settings = {
            "max_new_tokens": _positive_int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens, "max_new_tokens")
        }
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        if _as_bool(gen_kwargs.get("do_sample", False), "do_sample") or temperature > 0:
            settings.update(do_sample=True, temperature=temperature or 1.0)
            if gen_kwargs.get("top_p") is not None:
                settings["top_p"] = float(gen_kwargs["top_p"])
        else:
            settings["do_sample"] = False
        if int(gen_kwargs.get("num_beams") or 1) > 1:
            settings["num_beams"] = int(gen_kwargs["num_beams"])
        return settings, [stop for stop in until if stop]

    @staticmethod
    def _cut(text: str, until: list[str]) -> str:
        for stop in until:
            text = text.split(stop, 1)[0]
        return text.strip()

    def generate_until(self, requests) -> list[str]:
        """Answers to lmms-eval's `generate_until` requests, in their order. Requests with the same generation
        settings and the same number of images are answered together, `batch_size` at a time, longest first."""
        args = [request.args for request in requests]
        answers: list[str | None] = [None] * len(args)
        key = [json.dumps(arg[1] or {}, sort_keys=True, default=str) for arg in args]
        order = sorted(range(len(args)), key=lambda i: (key[i], -len(args[i][0]), i))
        groups: list[list[int]] = []
        for index in order:
            if groups and key[groups[-1][0]] == key[index] and len(groups[-1]) < self.batch_size:
                groups[-1].append(index)
            else:
                groups.append([index])
        for group in tqdm(groups, desc="Harmon answering", disable=self.rank != 0):
            settings, until = self._generation_settings(args[group[0]][1])
            images = {i: self._visuals(args[i][2], args[i][3], args[i][4], args[i][5]) for i in group}
            # One image count per batch, so the processor's flat image list maps onto the prompts in order.
            for count in sorted({len(found) for found in images.values()}):
                batch = [i for i in group if len(images[i]) == count]
                prompts = [self.format_prompt(args[i][0], count) for i in batch]
                inputs = self._inputs(prompts, [images[i] for i in batch])
                with torch.inference_mode():
                    output = self._model.generate(**inputs, **settings)
                texts = self._processor.batch_decode(output[:, inputs["input_ids"].shape[1] :])
                for i, text in zip(batch, texts, strict=True):
                    answers[i] = self._cut(text, until)
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """(log-probability of the continuation after the prompt, whether greedy decoding would produce it) for
        lmms-eval's `loglikelihood` requests `(context, continuation, doc_to_visual, doc_id, task, split)`; the
        continuation's tokens follow the chat-formatted prompt (the answer turn), one request at a time."""
        results = []
        for request in tqdm(requests, desc="Harmon scoring", disable=self.rank != 0):
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if callable(continuation):  # a task's doc_to_target
                continuation = continuation(self.task_dict[task][split][doc_id])
            images = self._visuals(doc_to_visual, doc_id, task, split)
            inputs = self._inputs([self.format_prompt(context, len(images))], [images])
            target = self.tokenizer(str(continuation), add_special_tokens=False, return_tensors="pt")["input_ids"]
            target = target.to(self._device)
            if target.shape[1] == 0:
                results.append((0.0, True))
                continue
            prompt_length = inputs["input_ids"].shape[1]
            inputs["input_ids"] = torch.cat([inputs["input_ids"], target], dim=1)
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            with torch.inference_mode():
                logits = self._model(**inputs).logits[0, prompt_length - 1 : -1].float()
            log_probs = torch.log_softmax(logits, dim=-1)
            chosen = log_probs.gather(-1, target[0].unsqueeze(-1)).squeeze(-1)
            results.append((float(chosen.sum()), bool((logits.argmax(-1) == target[0]).all())))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(
            "harmon answers single-turn tasks (generate_until, loglikelihood); multi-round tasks are not supported"
        )


def load_harmon(
    pretrained: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
):
    """(model in eval mode, processor) as `harmon ask` loads them: this package's classes, which run no code from the
    checkpoint, with `harmon ask`'s checks of the folder (`pretrained=None`: the embedded demo model); or, with
    `trust_remote_code`, `AutoModel` / `AutoProcessor.from_pretrained(..., trust_remote_code=True)`."""
    torch_dtype = getattr(torch, dtype)
    if trust_remote_code:
        from transformers import AutoModel, AutoProcessor

        source = pretrained or str(_default_model_dir())
        model = AutoModel.from_pretrained(source, revision=revision, dtype=torch_dtype, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(source, revision=revision, trust_remote_code=True)
        return model.to(device).eval(), processor

    from harmon_pipelines.default_model import load_model_and_tokenizer, load_processor

    if revision is not None:
        if pretrained is None:
            raise ValueError("harmon: revision needs pretrained (a Hub repo id)")
        from huggingface_hub import snapshot_download

        pretrained = snapshot_download(pretrained, revision=revision)
    model, tokenizer = load_model_and_tokenizer(pretrained, device=device, dtype=torch_dtype)
    return model, load_processor(pretrained, model, tokenizer)


def _default_model_dir() -> Path:
    from harmon_pipelines.default_model import DEFAULT_MODEL_DIR

    return DEFAULT_MODEL_DIR
