"""Harmon's web demo: a Gradio Blocks app over one loaded model (`harmon demo`, or a Space written by
`harmon space export`).

    harmon demo                                   # the embedded Shapes model, on http://127.0.0.1:7860
    harmon demo --model path/or/org-name --port 8080

In Python: `demo = HarmonDemo.load(None)` (or `HarmonDemo(model, tokenizer)`), then `launch(demo)`; `demo.blocks` is
the `gr.Blocks`, built but not launched.

Tabs: Generate (the masked-autoregressive reveal streamed live: the partial latents are decoded after every MAR
iteration, still-masked tokens shown as a grey checker; a gallery, a progress bar, a Stop button, the sampling
settings with the model's defaults and presets), Ask (a streamed chat about a picture), Inpaint / Outpaint (a painted
or uploaded mask, mapped onto the token grid by the inpainting rule, or padding sliders) and Edit (instruction
editing with both guidance scales; "Continue editing the result"). "Send to" buttons move a picture between tabs.
Pictures are shown enlarged by nearest-neighbour (display only: the downloads are the model's own pixels). Tabs whose
task the model's `config.trained_tasks` does not list say why instead of drawing.

Offline: no analytics (`GRADIO_ANALYTICS_ENABLED=False`, `analytics_enabled=False`), no run history, system fonts
(no font or asset is fetched from the internet), no server-side rendering. `share=True` is the only thing that needs
the network (Gradio downloads its tunnel binary and connects to its share server).

Every model call (all four tabs) waits in one bounded queue (`queue_size`, default 16) and one worker runs them one
at a time (`concurrency_id="harmon-model"`, limit 1: the model is shared and its CPU speed-up patches modules for
the length of a call); a full queue is refused with Gradio's "This application is currently busy. Please try again."
Mistakes in the inputs are shown as a `gr.Error` message, never a traceback.

This module imports only gradio, torch, PIL, numpy, `modeling_harmon` and `harmon_pipelines.default_model`, so that
`harmon space export` can vendor it with those two packages.
"""

import json
import math
import os
import queue
import secrets
import sys
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from pathlib import Path


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from modeling_harmon.atomic_files import write_png  # noqa: E402
from modeling_harmon.image_processing_harmon import to_rgb_image  # noqa: E402
from modeling_harmon.modeling_harmon_canvas import outpaint_canvas, redraw_tokens  # noqa: E402
from modeling_harmon.modeling_harmon_settings import HarmonSettingError  # noqa: E402
from modeling_harmon.pipeline_harmon import HarmonPipeline  # noqa: E402
from modeling_harmon.pipeline_harmon_edit import HarmonImageEditPipeline, edit_training_warning  # noqa: E402
from modeling_harmon.pipeline_harmon_inpaint import HarmonInpaintPipeline  # noqa: E402
from modeling_harmon.processing_harmon import HarmonProcessor  # noqa: E402

from .default_model import (  # noqa: E402
    DEFAULT_MODEL_DIR,
    RANDOM_MODEL_NAME,
    load_default_model,
    load_model_and_tokenizer,
    load_processor,
)


DISPLAY_SIDE = 256  # pictures are enlarged by an integer factor up to this many pixels on their longer side
MAX_IMAGES = 4  # images per Generate request
QUEUE_SIZE = 16  # requests waiting at most (all tabs together)
MAX_UPLOAD = "10mb"
MAX_UPLOAD_PIXELS = 4096 * 4096
MAX_SEED = 2**64 - 1
MAX_NEW_TOKENS = 256
CONCURRENCY_ID = "harmon-model"
DEFAULTS_CHOICE = "(the model's defaults)"
BUSY_MESSAGE = "This application is currently busy. Please try again."  # Gradio's own words for a full queue
# The task of `config.trained_tasks` each tab needs (inpainting and outpainting draw with the text-to-image skill:
# the MAR mask needs no training of its own).
TAB_TASKS = {"generate": "text2image", "ask": "image2text", "inpaint": "text2image", "edit": "edit"}
TASK_WORDS = {"text2image": "text-to-image generation", "image2text": "image understanding", "edit": "editing"}
# The UI's name for each setting, in error messages.
SETTING_LABELS = {
    "height": "Height",
    "width": "Width",
    "num_iter": "MAR iterations",
    "num_sampling_steps": "Head steps",
    "guidance_scale": "Guidance scale",
    "image_guidance_scale": "Image guidance scale",
    "cfg_schedule": "CFG schedule",
    "temperature": "Temperature",
    "sampling": "Sampling preset",
}
CSS = """
.harmon-pixelated img, .harmon-pixelated canvas { image-rendering: pixelated; }
.harmon-picture img { width: 100%; height: 100%; object-fit: contain; }
#harmon-header p { margin: 0; }
"""
# Examples of the Shapes world (the embedded demo model's): prompts it draws, questions it answers, edits.
GENERATE_EXAMPLES = [
    ["a red circle on the left", 0],
    ["a blue square above a green triangle", 1],
    ["two yellow circles", 2],
    ["a purple square in the center", 3],
]
ASK_QUESTIONS = ["what color is the circle?", "what shape is on the right?", "how many shapes are there?"]
INPAINT_PROMPT = "a red circle to the left of a blue square"
EDIT_INSTRUCTION = "make the circle blue"


def theme() -> gr.themes.Base:
    """Gradio's default look with the system's fonts: nothing is fetched for them, from the internet or the server."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
    )


# ----------------------------------------------------------------------------------------------- inputs
def _not_an_image(label: str, payload, error: BaseException) -> gr.Error:
    """The message for an upload PIL cannot decode: its own name, never the server's path of it."""
    name = getattr(payload, "orig_name", None)
    what = f"{name!r} is" if name else "the upload is"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        reason = "too many pixels to decode safely"
    else:
        reason = type(error).__name__ if isinstance(error, OSError) else " ".join(str(error).split())
    return gr.Error(f"{label}: {what} not an image that can be read ({reason}).", print_exception=False)


def _check_pixels(image: Image.Image | None, label: str) -> None:
    if image is not None and image.width * image.height > MAX_UPLOAD_PIXELS:
        raise gr.Error(
            f"{label}: {image.width}x{image.height} pixels is too large for this demo (at most "
            f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels).",
            print_exception=False,
        )


UNREADABLE = (
    OSError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def guard_uploads(component, check_pixels: bool = True):
    """`component` (a `gr.Image` or `gr.ImageEditor`) with its uploads checked: one that is not an image, or a
    decompression bomb, is a `gr.Error` naming the input, not an exception of the server. The check wraps this
    instance's `preprocess`: a subclass of a Gradio component would make Gradio write a `.pyi` stub beside this file
    at import."""
    preprocess = component.preprocess
    label = component.label or "image"

    def checked(payload):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                value = preprocess(payload)
                if isinstance(value, Image.Image):
                    value.load()
        except gr.Error:
            raise
        except UNREADABLE as error:
            raise _not_an_image(label, payload, error) from None
        if check_pixels and isinstance(value, Image.Image):
            _check_pixels(value, label)
        return value

    component.preprocess = checked
    return component


def picture_input(**options) -> gr.Image:
    """A `gr.Image` input of PIL pictures whose bad uploads are a `gr.Error` (see [`guard_uploads`])."""
    return guard_uploads(gr.Image(**options))


def mask_editor(**options) -> gr.ImageEditor:
    """A `gr.ImageEditor` whose bad layers are a `gr.Error` (see [`guard_uploads`])."""
    return guard_uploads(gr.ImageEditor(**options), check_pixels=False)


def _message_text(content) -> str:
    """The text of a chat message's content: a string, or Gradio 6's list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, (list, tuple)):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _error(message: str) -> gr.Error:
    return gr.Error(message, print_exception=False)


def enlarge(image: Image.Image | None, side: int = DISPLAY_SIDE) -> Image.Image | None:
    """`image` enlarged by the largest integer factor that keeps its longer side within `side` (nearest neighbour:
    every pixel becomes a sharp square), for display only."""
    if image is None:
        return None
    factor = max(1, side // max(image.size))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def _pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in about [-1, 1] -> RGB PIL images, as diffusers' `VaeImageProcessor.postprocess` converts."""
    array = (images.float() / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(item) for item in (array * 255).round().astype("uint8")]


def _seed(seed, random_seed: bool, count: int) -> int:
    if random_seed:
        return secrets.randbelow(2**31)
    if seed is None or isinstance(seed, bool) or not float(seed).is_integer():
        raise _error(f"Seed must be a whole number in [0, 2**64 - 1], got {seed!r}.")
    seed = int(seed)
    if not 0 <= seed <= MAX_SEED - (count - 1):
        raise _error(f"Seed must be in [0, 2**64 - {count}] (image k is drawn with seed + k), got {seed}.")
    return seed


def _whole(value, label: str, low: int = 0):
    """An int from a slider or number field (which may send floats); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise _error(f"{label} must be a whole number, got {value!r}.")
    if value < low:
        raise _error(f"{label} must be at least {low}, got {int(value)}.")
    return int(value)


def _text(value, label: str, required: bool = True) -> str | None:
    text = (value or "").strip() if isinstance(value, str) or value is None else None
    if text is None:
        raise _error(f"{label} must be text, got {type(value).__name__}.")
    if required and not text:
        raise _error(f"{label} must not be empty.")
    return text or None


# -------------------------------------------------------------------------------------------------- the demo
class HarmonDemo:
    """The Gradio app over one Harmon `model` and `tokenizer` (`processor`: for Ask; default: the one saved with
    `source`, the folder or repo the model came from, else one built from the model's config). `blocks` is built at
    once and launched by [`launch`].

    Args:
        max_side: the largest image side a request may ask for (default: 4 x the model's image size, at most 2048).
        max_images: images per Generate request. queue_size: requests that may wait (all tabs together).
        display_side: pictures are shown enlarged up to this many pixels (nearest neighbour, display only).
    """

    def __init__(
        self,
        model,
        tokenizer,
        processor=None,
        source: str | None = None,
        max_side: int | None = None,
        max_images: int = MAX_IMAGES,
        queue_size: int = QUEUE_SIZE,
        display_side: int = DISPLAY_SIDE,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        if processor is None:  # without a source, the model's own config (not the embedded model's processor)
            processor = (
                load_processor(source, model, tokenizer)
                if source
                else HarmonProcessor.from_model_config(model.config, tokenizer)
            )
        self.processor = processor
        self.name = model.name_or_path or source or RANDOM_MODEL_NAME
        if Path(self.name).resolve() == DEFAULT_MODEL_DIR.resolve():
            self.name = "the embedded Shapes demo model"
        config = model.config
        self.stride = config.vae_stride * config.patch_size
        self.image_size = config.image_size
        self.max_side = max_side or self._default_max_side(config)
        self.max_images = max_images
        self.queue_size = queue_size
        self.display_side = display_side
        self.defaults = model.image_generation_settings().to_dict()
        generation_config = getattr(model, "generation_config", None)
        self.presets = dict(getattr(generation_config, "image_generation_presets", None) or {})
        tasks = getattr(config, "trained_tasks", None)
        self.tasks = list(tasks) if isinstance(tasks, (list, tuple)) else None
        self.lock = threading.Lock()  # one model call at a time, whatever runs it
        self._runs: dict[str, threading.Event] = {}  # session -> the stop flag of its running drawing
        self._pending_stops: set[str] = set()  # sessions whose Stop came before their drawing started
        self._files = tempfile.TemporaryDirectory(prefix="harmon-demo-")
        self.blocks = self._build()

    @staticmethod
    def _default_max_side(config) -> int:
        """4 x the model's image size, at most 2048, and no larger than a square whose tokens fit in the LLM's
        positions with the buffers and a prompt of up to 64 tokens (never below the model's own size)."""
        stride = config.vae_stride * config.patch_size
        side = min(2048, 4 * config.image_size)
        limit = getattr(config.text_config, "max_position_embeddings", None)
        if limit:
            side = min(side, max(config.image_size, math.isqrt(max(1, limit - config.buffer_size - 64)) * stride))
        return side // stride * stride

    @classmethod
    def load(
        cls,
        source: str | None = None,
        trust_remote_code: bool = False,
        device: str | None = None,
        dtype: torch.dtype = torch.float32,
        **options,
    ) -> "HarmonDemo":
        """The demo of `source` (a Harmon folder or Hub repo id; None: the embedded default model), loaded through
        this package's classes (no remote code) unless `trust_remote_code`."""
        model, tokenizer, processor = load_for_demo(source, trust_remote_code, device, dtype)
        return cls(model, tokenizer, processor, source=source, **options)

    # ------------------------------------------------------------------------------------------- helpers
    def supports(self, tab: str) -> bool:
        """Whether the model's config lists the task `tab` needs (an unknown list: yes)."""
        return self.tasks is None or TAB_TASKS[tab] in self.tasks

    def _why_not(self, tab: str) -> str:
        task = TAB_TASKS[tab]
        return (
            f"**This model was not trained for {TASK_WORDS.get(task, task)}**: its `config.trained_tasks` is "
            f"`{self.tasks}`, without `{task!r}`, so this tab is off. Load a model trained for it with "
            "`harmon demo --model ...`."
        )

    def _require(self, tab: str) -> None:
        """Refuse a request of a tab the model was not trained for (the page says why; the API says it here)."""
        if not self.supports(tab):
            raise _error(self._why_not(tab).replace("**", "").replace("`", ""))

    @staticmethod
    def _session(request: gr.Request | None) -> str:
        return getattr(request, "session_hash", None) or ""

    def _arm(self, request: gr.Request):
        """Before a drawing request of the page is queued: forget a Stop pressed while nothing ran."""
        self._pending_stops.discard(self._session(request))

    def _stop(self, request: gr.Request):
        """The Stop buttons: the session's running drawing ends after its current MAR iteration; one still waiting in
        the queue ends before its first."""
        session = self._session(request)
        run = self._runs.get(session)
        if run is not None:
            run.set()
        else:
            self._pending_stops.add(session)
        return "Stopping after the current MAR iteration..."

    def _settings(self, preset=None, **given) -> dict:
        """The resolved settings (validated by the model) for the UI's values; a bad one is a `gr.Error`."""
        try:
            return self.model.image_generation_settings(preset, **given).to_dict()
        except HarmonSettingError as error:
            label = SETTING_LABELS.get(error.field, error.field)
            message = str(error)
            if message.startswith(error.argument):
                message = message[len(error.argument) :].strip()
            raise _error(f"{label} {message}") from None

    def _check_size(self, height, width) -> tuple[int | None, int | None]:
        height, width = _whole(height, "Height", 1), _whole(width, "Width", 1)
        for label, side in (("Height", height), ("Width", width)):
            if side is not None and side > self.max_side:
                raise _error(f"{label} {side} px is refused: this demo draws sides of at most {self.max_side} px.")
        return height, width

    def _check_picture(self, picture, label: str, canvas: bool) -> Image.Image:
        if picture is None:
            raise _error(f"{label}: upload a picture first (or send one from another tab).")
        if not isinstance(picture, Image.Image):
            raise _error(f"{label}: expected an image, got {type(picture).__name__}.")
        picture = to_rgb_image(picture)
        if canvas:
            if max(picture.size) > self.max_side:
                raise _error(
                    f"{label} is {picture.width}x{picture.height} px; this demo draws sides of at most "
                    f"{self.max_side} px: resize it."
                )
            if picture.width % self.stride or picture.height % self.stride:
                raise _error(
                    f"{label} is {picture.width}x{picture.height} px; its sides must be multiples of {self.stride} "
                    "(the model's token stride): resize or crop it."
                )
        return picture

    def _save(self, image: Image.Image, metadata: dict) -> str:
        """The picture as a PNG (with its metadata, as `harmon generate` writes it) in this demo's folder; files
        older than an hour are removed (Gradio serves its own copy)."""
        folder = Path(self._files.name)
        cutoff = time.time() - 3600
        for old in folder.glob("*.png"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except OSError:
                pass
        path = folder / f"harmon-{uuid.uuid4().hex[:12]}.png"

        write_png(image, path, {"prompt": metadata.get("prompt", ""), "harmon": json.dumps(metadata)})
        return str(path)

    def _reveal(self, latents: torch.Tensor, mask: torch.Tensor | None) -> Image.Image:
        """The first image of a partial drawing: its latents decoded, still-masked tokens as a grey checker."""
        pixels = np.asarray(_pil(self.model.model.decode_latents(latents[:1]))[0]).copy()
        if mask is not None:
            rows, cols = (
                latents.shape[-2] // self.model.config.patch_size,
                latents.shape[-1] // self.model.config.patch_size,
            )
            masked = mask[0].reshape(rows, cols).cpu().numpy()
            self._checker(pixels, masked)
        return Image.fromarray(pixels)

    def _checker(self, pixels: np.ndarray, masked: np.ndarray) -> None:
        """Paint the token cells `masked` (rows, cols) of `pixels` (H, W, 3) as a grey checker, in place."""
        rows, cols = masked.shape
        grey = np.where((np.arange(rows)[:, None] + np.arange(cols)[None, :]) % 2 == 0, 200, 160).astype(np.uint8)
        cells = np.kron(masked, np.ones((self.stride, self.stride), dtype=bool))
        shade = np.kron(grey, np.ones((self.stride, self.stride), dtype=np.uint8))
        pixels[cells] = shade[cells][:, None]

    def _draw(self, request, progress, run):
        """Run `run(callback)` (a pipeline call returning PIL images) on a worker thread, yielding ("frame",
        image, step, total) after each MAR iteration and ("done", images, stopped_at) at the end; the worker's
        errors are raised here (settings and input mistakes as `gr.Error`)."""
        events = queue.Queue()
        session = self._session(request)
        stop = threading.Event()
        if session in self._pending_stops:
            self._pending_stops.discard(session)
            stop.set()
        self._runs[session] = stop
        progress_state = {"step": 0, "total": None}

        def callback(pipe, step, timestep, tensors):
            if stop.is_set():
                pipe._interrupt = True
            progress_state.update(step=step + 1, total=pipe.num_timesteps)
            events.put(("frame", self._reveal(tensors["latents"], tensors["mask"]), step + 1, pipe.num_timesteps))
            return {}

        def work():
            try:
                with self.lock:
                    events.put(("done", run(callback)))
            except BaseException as error:  # handed to the request's thread
                events.put(("error", error))

        progress(0, desc="waiting for the model")
        worker = threading.Thread(target=work, name="harmon-demo-draw", daemon=True)
        worker.start()
        finished = False
        try:
            while True:
                kind, *payload = events.get()
                if kind == "frame":
                    image, step, total = payload
                    progress((step, total), desc=f"MAR iteration {step}/{total}", unit="iterations")
                    yield ("frame", image, step, total)
                elif kind == "done":
                    finished = True
                    stopped = (
                        stop.is_set() and progress_state["total"] and progress_state["step"] < progress_state["total"]
                    )
                    yield ("done", payload[0], progress_state["step"] if stopped else None)
                    return
                else:
                    finished = True
                    raise self._as_gr_error(payload[0])
        finally:
            if not finished:  # the page went away or the request was cancelled: let the worker end early
                stop.set()
            if self._runs.get(session) is stop:
                del self._runs[session]

    @staticmethod
    def _as_gr_error(error: BaseException) -> gr.Error:
        if isinstance(error, gr.Error):
            return error
        if isinstance(error, HarmonSettingError):
            label = SETTING_LABELS.get(error.field, error.field)
            message = str(error)
            if message.startswith(error.argument):
                message = message[len(error.argument) :].strip()
            return _error(f"{label} {message}")
        if isinstance(error, (ValueError, MemoryError)) or "out of memory" in str(error).lower():
            return _error(" ".join(str(error).split()) or type(error).__name__)
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        return _error(f"The model failed ({type(error).__name__}); the server's log has the details.")

    # ---------------------------------------------------------------------------------------------- generate
    def _preset_values(self, preset):
        settings = self._settings(None if preset in (None, DEFAULTS_CHOICE) else preset)
        return (
            settings["num_iter"],
            settings["num_sampling_steps"],
            settings["guidance_scale"],
            settings["cfg_schedule"],
            settings["temperature"],
        )

    def generate(
        self,
        prompt,
        negative_prompt,
        seed,
        random_seed,
        num_images,
        height,
        width,
        preset,
        steps,
        head_steps,
        guidance_scale,
        cfg_schedule,
        temperature,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        """Generate tab: yields (live frame, gallery, files, status, seed, originals)."""
        self._require("generate")
        prompt = _text(prompt, "Prompt")
        negative = _text(negative_prompt, "Negative prompt", required=False)
        count = _whole(num_images, "Number of images", 1)
        if count > self.max_images:
            raise _error(f"Number of images: at most {self.max_images} per request in this demo, got {count}.")
        height, width = self._check_size(height, width)
        seed = _seed(seed, random_seed, count)
        preset = None if preset in (None, "", DEFAULTS_CHOICE) else preset
        settings = self._settings(
            preset,
            height=height,
            width=width,
            num_iter=_whole(steps, "MAR iterations", 1),
            num_sampling_steps=_whole(head_steps, "Head steps", 1),
            guidance_scale=guidance_scale,
            cfg_schedule=cfg_schedule or None,
            temperature=temperature,
        )
        arguments = {
            "height": settings["height"],
            "width": settings["width"],
            "num_inference_steps": settings["num_iter"],
            "num_sampling_steps": settings["num_sampling_steps"],
            "guidance_scale": settings["guidance_scale"],
            "cfg_schedule": settings["cfg_schedule"],
            "temperature": settings["temperature"],
        }

        described = []  # prompt_mode "describe": the model's restatement of the prompt, shown with the images

        def run(callback):
            pipe = HarmonPipeline(model=self.model, tokenizer=self.tokenizer)
            pipe.set_progress_bar_config(disable=True)
            output = pipe(
                prompt=prompt,
                negative_prompt=negative,
                num_images_per_prompt=count,
                generator=[torch.Generator().manual_seed(seed + k) for k in range(count)],
                sampling=preset,
                callback_on_step_end=callback,
                callback_on_step_end_tensor_inputs=["latents", "mask"],
                **arguments,
            )
            described[:] = output.descriptions or []
            return output.images

        started = time.perf_counter()
        status = f"Drawing {count} image(s) of {settings['width']}x{settings['height']} px, seed {seed}..."
        yield None, None, None, status, seed, gr.skip()
        for kind, *payload in self._draw(request, progress, run):
            if kind == "frame":
                image, step, total = payload
                status = f"MAR iteration {step}/{total} (image 1 of {count} shown live)"
                yield enlarge(image, self.display_side), gr.skip(), gr.skip(), status, seed, gr.skip()
                continue
            images, stopped_at = payload
            files = []
            for k, image in enumerate(images):
                metadata = {"prompt": prompt, "seed": seed + k, "settings": arguments, "model": self.name}
                if negative:
                    metadata["negative_prompt"] = negative
                if described:
                    metadata["description"] = described[0]
                files.append(self._save(image, metadata))
            gallery = [(enlarge(image, self.display_side), f"seed {seed + k}") for k, image in enumerate(images)]
            seconds = time.perf_counter() - started
            seeds = f"seed {seed}" if count == 1 else f"seeds {seed}..{seed + count - 1}"
            status = f"Drew {count} image(s) in {seconds:.1f} s, {seeds}."
            if described:  # only a prompt the model changed is reported
                status += f' The model read the prompt as "{described[0]}" and drew that.'
            if stopped_at is not None:
                status = f"Stopped after MAR iteration {stopped_at}: the tokens drawn so far, the rest left empty."
            yield enlarge(images[0], self.display_side), gallery, files, status, seed, images

    # ---------------------------------------------------------------------------------------------------- ask
    def ask(self, image, question, history, use_history, max_new_tokens, request: gr.Request = None):
        """Ask tab: yields the chat (the answer streamed token by token) and the emptied question box."""
        self._require("ask")
        question = _text(question, "Question")
        image = self._check_picture(image, "Picture", canvas=False)
        max_new_tokens = _whole(max_new_tokens, "Longest answer", 1)
        if max_new_tokens > MAX_NEW_TOKENS:
            raise _error(f"Longest answer: at most {MAX_NEW_TOKENS} tokens in this demo, got {max_new_tokens}.")
        history = [
            {"role": message.get("role"), "content": _message_text(message.get("content"))}
            for message in (history or [])
            if isinstance(message, dict) and message.get("role") in ("user", "assistant")
        ]
        messages = []
        if use_history:
            for message in history:
                text = _message_text(message.get("content"))
                if message.get("role") in ("user", "assistant") and text:
                    messages.append({"role": message["role"], "content": [{"type": "text", "text": text}]})
            if messages:  # the picture goes with the first question
                first = next(index for index, message in enumerate(messages) if message["role"] == "user")
                messages[first]["content"].insert(0, {"type": "image"})
        if not messages:
            messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]})
        else:
            messages.append({"role": "user", "content": [{"type": "text", "text": question}]})
        processor, model = self.processor, self.model
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=image, text=text, return_tensors="pt").to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        prompt_length = inputs["input_ids"].shape[1]
        events = queue.Queue()

        class Streamer:  # transformers' streamer protocol: put(ids) per step (the prompt first), end()
            def __init__(self):
                self.ids, self.prompt_seen = [], False

            def put(self, value):
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                self.ids.extend(value.reshape(-1).tolist())
                events.put(("text", processor.decode(self.ids).strip()))

            def end(self):
                pass

        def work():
            try:
                with self.lock:
                    output = model.generate(
                        **inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=Streamer()
                    )
                events.put(("done", processor.decode(output[0, prompt_length:]).strip()))
            except BaseException as error:
                events.put(("error", error))

        history = history + [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        yield history, ""
        threading.Thread(target=work, name="harmon-demo-ask", daemon=True).start()
        while True:
            kind, payload = events.get()
            if kind == "error":
                raise self._as_gr_error(payload)
            history[-1] = {"role": "assistant", "content": payload}
            yield history, ""
            if kind == "done":
                return

    # ------------------------------------------------------------------------------------------------ inpaint
    def _painted_mask(self, picture: Image.Image, painted) -> Image.Image | None:
        """The mask painted in the editor (any layer pixel that is not transparent), at the picture's size: the
        editor shows the picture enlarged by an integer factor, so each picture pixel is masked if any of its
        factor x factor screen pixels was painted."""
        if not isinstance(painted, dict):
            return None
        layers = [np.asarray(layer) for layer in painted.get("layers") or [] if layer is not None]
        layers = [layer for layer in layers if layer.ndim == 3 and layer.shape[-1] == 4]
        if not layers:
            return None
        shape = layers[0].shape[:2]
        if any(layer.shape[:2] != shape for layer in layers):
            raise _error("Mask: the painted layers differ in size; clear the editor and paint again.")
        alpha = np.any(np.stack([layer[..., 3] > 0 for layer in layers]), axis=0)
        if not alpha.any():
            return None
        height, width = shape
        factor = height // picture.height
        if factor < 1 or height != picture.height * factor or width != picture.width * factor:
            raise _error(
                f"Mask: the painted mask is {width}x{height} px, which does not match the picture "
                f"({picture.width}x{picture.height} px): paint on the picture shown in the editor."
            )
        small = alpha.reshape(picture.height, factor, picture.width, factor).any(axis=(1, 3))
        return Image.fromarray((small * 255).astype(np.uint8), mode="L")

    def _editor_value(self, picture):
        """The editor's content for a new picture: the picture enlarged (display only), no paint."""
        if not isinstance(picture, Image.Image):
            return None
        shown = enlarge(to_rgb_image(picture), self.display_side)
        return {"background": shown, "layers": [], "composite": shown}

    def inpaint(
        self,
        picture,
        mode,
        painted,
        mask,
        left,
        right,
        top,
        bottom,
        prompt,
        seed,
        random_seed,
        steps,
        guidance_scale,
        temperature,
        paste_back,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        """Inpaint / Outpaint tab: yields (result, file, status, seed, original result)."""
        self._require("inpaint")
        picture = self._check_picture(picture, "Picture", canvas=True)
        prompt = _text(prompt, "Prompt")
        seed = _seed(seed, random_seed, 1)
        outpaint = str(mode or "").lower().startswith("outpaint")
        if outpaint:
            pads = {
                name: _whole(value, name.capitalize()) or 0
                for name, value in zip(("left", "right", "top", "bottom"), (left, right, top, bottom))
            }
            if not any(pads.values()):
                raise _error("Outpaint: set at least one of Left, Right, Top, Bottom above 0 (pixels to add).")
            try:
                canvas, mask_image = outpaint_canvas(picture, self.stride, **pads)
            except ValueError as error:
                raise _error(f"Outpaint: {error}") from None
            if max(canvas.size) > self.max_side:
                raise _error(
                    f"Outpaint: the canvas would be {canvas.width}x{canvas.height} px; this demo draws sides of at "
                    f"most {self.max_side} px."
                )
        else:
            canvas = picture
            if mask is not None:
                mask_image = self._check_picture(mask, "Mask", canvas=False).convert("L")
                if mask_image.size != picture.size:
                    raise _error(
                        f"Mask is {mask_image.width}x{mask_image.height} px but the picture is "
                        f"{picture.width}x{picture.height} px: upload a mask of the picture's size (white = redraw)."
                    )
            else:
                mask_image = self._painted_mask(picture, painted)
            if mask_image is None:
                raise _error("Mask: paint over the part to redraw (or upload a mask: white = redraw).")
        tokens = redraw_tokens(mask_image, canvas.height, canvas.width, self.stride)[0]
        if not bool(tokens.any()):
            raise _error(
                "Mask: no token is marked for redrawing (a cell is redrawn if a pixel of it is at least half white)."
            )
        steps = _whole(steps, "MAR iterations", 0) or None  # 0: the model's, scaled by the share of tokens drawn
        settings = self._settings(
            height=canvas.height,
            width=canvas.width,
            num_iter=steps,
            guidance_scale=guidance_scale,
            temperature=temperature,
        )
        arguments = {
            "num_inference_steps": steps,
            "guidance_scale": settings["guidance_scale"],
            "temperature": settings["temperature"],
        }

        def run(callback):
            pipe = HarmonInpaintPipeline(model=self.model, tokenizer=self.tokenizer)
            pipe.set_progress_bar_config(disable=True)
            return pipe(
                prompt=prompt,
                image=canvas,
                mask_image=mask_image,
                paste_back=bool(paste_back),
                generator=[torch.Generator().manual_seed(seed)],
                callback_on_step_end=callback,
                callback_on_step_end_tensor_inputs=["latents", "mask"],
                **arguments,
            ).images

        first = np.asarray(canvas).copy()
        self._checker(first, tokens.numpy())
        redrawn, total = int(tokens.sum()), tokens.numel()
        started = time.perf_counter()
        what = "Outpainting" if outpaint else "Inpainting"
        status = f"{what}: {redrawn} of {total} tokens to draw (grey checker), seed {seed}..."
        yield enlarge(Image.fromarray(first), self.display_side), None, status, seed, gr.skip()
        for kind, *payload in self._draw(request, progress, run):
            if kind == "frame":
                image, step, steps_total = payload
                if steps_total is not None:
                    status = f"{what}: MAR iteration {step}/{steps_total}, {redrawn} of {total} tokens drawn in all"
                yield enlarge(image, self.display_side), gr.skip(), status, seed, gr.skip()
                continue
            images, stopped_at = payload
            metadata = {"prompt": prompt, "seed": seed, "settings": arguments, "model": self.name}
            metadata["mode"] = "outpaint" if outpaint else "inpaint"
            path = self._save(images[0], metadata)
            status = (
                f"{what}: redrew {redrawn} of {total} tokens in {time.perf_counter() - started:.1f} s, seed {seed}."
            )
            if stopped_at is not None:
                status = f"Stopped after MAR iteration {stopped_at}: the tokens drawn so far, the rest left empty."
            yield enlarge(images[0], self.display_side), path, status, seed, images[0]

    # --------------------------------------------------------------------------------------------------- edit
    def edit(
        self,
        picture,
        instruction,
        image_guidance_scale,
        guidance_scale,
        seed,
        random_seed,
        height,
        width,
        steps,
        temperature,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        """Edit tab: yields (result, file, status, seed, original result)."""
        self._require("edit")
        picture = self._check_picture(picture, "Picture", canvas=False)
        instruction = _text(instruction, "Instruction")
        seed = _seed(seed, random_seed, 1)
        height, width = self._check_size(height, width)
        settings = self._settings(
            height=height,
            width=width,
            num_iter=_whole(steps, "MAR iterations", 1),
            guidance_scale=guidance_scale,
            image_guidance_scale=image_guidance_scale,
            temperature=temperature,
        )
        arguments = {
            "height": settings["height"],
            "width": settings["width"],
            "num_inference_steps": settings["num_iter"],
            "guidance_scale": settings["guidance_scale"],
            "image_guidance_scale": settings["image_guidance_scale"],
            "temperature": settings["temperature"],
        }

        described = []  # edit_mode "describe": the model's text of the result, shown with it

        def run(callback):
            pipe = HarmonImageEditPipeline(model=self.model, tokenizer=self.tokenizer)
            pipe.set_progress_bar_config(disable=True)
            pipe._warned_untrained = True  # the tab says so
            output = pipe(
                prompt=instruction,
                image=[picture],
                generator=[torch.Generator().manual_seed(seed)],
                callback_on_step_end=callback,
                callback_on_step_end_tensor_inputs=["latents", "mask"],
                **arguments,
            )
            described[:] = output.descriptions or []
            return output.images

        started = time.perf_counter()
        yield None, None, f"Editing, seed {seed}...", seed, gr.skip()
        for kind, *payload in self._draw(request, progress, run):
            if kind == "frame":
                image, step, total = payload
                yield enlarge(image, self.display_side), gr.skip(), f"MAR iteration {step}/{total}", seed, gr.skip()
                continue
            images, stopped_at = payload
            metadata = {"prompt": instruction, "seed": seed, "settings": arguments, "model": self.name, "mode": "edit"}
            if described:
                metadata["description"] = described[0]
            path = self._save(images[0], metadata)
            status = f"Edited in {time.perf_counter() - started:.1f} s, seed {seed}."
            if described:
                status += f' The model described the result as "{described[0]}" and drew that.'

            if stopped_at is not None:
                status = f"Stopped after MAR iteration {stopped_at}: the tokens drawn so far, the rest left empty."
            yield enlarge(images[0], self.display_side), path, status, seed, images[0]

    # ------------------------------------------------------------------------------------------------ layout
    def _example_pictures(self) -> dict[str, str]:
        """PNG files of Shapes scenes (the demo model's world) for the examples of Ask, Inpaint and Edit."""
        from PIL import ImageDraw

        folder = Path(self._files.name) / "examples"
        folder.mkdir(exist_ok=True)
        side = self.image_size
        scale = side / 32
        scenes = {
            "circle_square": [("circle", (215, 40, 40), (8, 16)), ("square", (40, 70, 215), (24, 16))],
            "triangle": [("triangle", (40, 170, 60), (16, 16))],
        }
        paths = {}
        for name, shapes in scenes.items():
            image = Image.new("RGB", (side, side), (235, 235, 235))
            draw = ImageDraw.Draw(image)
            for shape, fill, (cx, cy) in shapes:
                cx, cy, half = cx * scale, cy * scale, 5.5 * scale
                box = (cx - half, cy - half, cx + half - 1, cy + half - 1)
                if shape == "circle":
                    draw.ellipse(box, fill=fill)
                elif shape == "square":
                    draw.rectangle(box, fill=fill)
                else:
                    draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
            path = folder / f"{name}.png"
            image.save(path)
            paths[name] = str(path)
        mask = Image.new("L", (side, side), 0)
        ImageDraw.Draw(mask).rectangle((0, 0, side // 2 - 1, side - 1), fill=255)
        mask.save(folder / "left_half_mask.png")
        paths["left_half_mask"] = str(folder / "left_half_mask.png")
        return paths

    def _header(self) -> str:
        tasks = (
            "not recorded in its config (all tabs shown)" if self.tasks is None else ", ".join(self.tasks) or "none"
        )
        return (
            f"## Harmon\nModel `{self.name}` · {self.image_size} px images (token stride {self.stride}) · trained "
            f"tasks: {tasks}. Pictures are shown enlarged without smoothing; downloads hold the model's own pixels."
        )

    def _build(self) -> gr.Blocks:
        defaults, stride = self.defaults, self.stride
        max_tokens = (self.max_side // stride) ** 2
        examples = self._example_pictures()
        model_events = {"concurrency_id": CONCURRENCY_ID, "concurrency_limit": 1}
        private = {"api_visibility": "private"}
        pixelated = ["harmon-pixelated"]
        picture_classes = ["harmon-pixelated", "harmon-picture"]  # inputs: shown at the frame's size, unsmoothed
        with gr.Blocks(title="Harmon", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
            gr.Markdown(self._header(), elem_id="harmon-header")
            originals = gr.State([])  # Generate's images at the model's own size
            selected = gr.State(0)
            with gr.Tabs() as tabs:
                # ------------------------------------------------------------------------------------- Generate
                with gr.Tab("Generate", id="generate"):
                    if not self.supports("generate"):
                        gr.Markdown(self._why_not("generate"))
                    with gr.Row(visible=self.supports("generate")):
                        with gr.Column(scale=1):
                            prompt = gr.Textbox(
                                label="Prompt",
                                placeholder="a red circle on the left",
                                lines=2,
                                elem_id="harmon-prompt",
                            )
                            negative = gr.Textbox(label="Negative prompt", placeholder="(optional)")
                            with gr.Row():
                                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
                                random_seed = gr.Checkbox(label="Random seed", value=False)
                            count = gr.Slider(1, self.max_images, value=1, step=1, label="Number of images")
                            with gr.Row():
                                height = gr.Slider(
                                    stride, self.max_side, value=defaults["height"], step=stride, label="Height"
                                )
                                width = gr.Slider(
                                    stride, self.max_side, value=defaults["width"], step=stride, label="Width"
                                )
                            with gr.Accordion("Advanced: sampling settings (the model's defaults)", open=False):
                                preset = gr.Dropdown(
                                    [DEFAULTS_CHOICE, *sorted(self.presets)],
                                    value=DEFAULTS_CHOICE,
                                    label="Sampling preset",
                                    info="the model's named sampling presets (generation_config.image_generation_presets)",
                                )
                                steps = gr.Slider(
                                    1, max_tokens, value=defaults["num_iter"], step=1, label="MAR iterations"
                                )
                                head_steps = gr.Slider(
                                    1,
                                    self.model.config.num_train_timesteps,
                                    value=defaults["num_sampling_steps"],
                                    step=1,
                                    label="Head steps",
                                    info="diffusion-head steps per token",
                                )
                                cfg = gr.Slider(
                                    1.0, 10.0, value=defaults["guidance_scale"], step=0.05, label="Guidance scale"
                                )
                                schedule = gr.Radio(
                                    ["constant", "linear"], value=defaults["cfg_schedule"], label="CFG schedule"
                                )
                                temperature = gr.Slider(
                                    0.01, 2.0, value=defaults["temperature"], step=0.01, label="Temperature"
                                )
                                reset = gr.Button("Reset to the model's defaults", size="sm")
                            with gr.Row():
                                generate_button = gr.Button("Generate", variant="primary", elem_id="harmon-generate")
                                stop_button = gr.Button("Stop", variant="stop")
                            gr.Examples(GENERATE_EXAMPLES, inputs=[prompt, seed], label="Examples (the Shapes world)")
                        with gr.Column(scale=1):
                            live = gr.Image(
                                label="Live: the masked-autoregressive reveal (grey = not drawn yet)",
                                type="pil",
                                format="png",
                                interactive=False,
                                elem_classes=pixelated,
                                elem_id="harmon-live",
                            )
                            status = gr.Markdown("", elem_id="harmon-status")
                            gallery = gr.Gallery(
                                label="Images",
                                format="png",
                                columns=2,
                                fit_columns=False,
                                height=460,
                                object_fit="contain",
                                elem_classes=pixelated,
                                elem_id="harmon-gallery",
                            )
                            files = gr.File(
                                label="Downloads (the model's own pixels, PNG with settings)",
                                file_count="multiple",
                                interactive=False,
                            )
                            with gr.Row():
                                to_ask = gr.Button("Send to Ask", size="sm")
                                to_edit = gr.Button("Send to Edit", size="sm")
                                to_inpaint = gr.Button("Send to Inpaint", size="sm")
                # ------------------------------------------------------------------------------------------ Ask
                with gr.Tab("Ask", id="ask"):
                    if not self.supports("ask"):
                        gr.Markdown(self._why_not("ask"))
                    with gr.Row(visible=self.supports("ask")):
                        with gr.Column(scale=1):
                            ask_picture = picture_input(
                                label="Picture", type="pil", image_mode=None, height=288, elem_classes=picture_classes
                            )
                            use_history = gr.Checkbox(
                                label="Earlier turns in context",
                                value=False,
                                info="off: every question is asked about the picture alone, as `harmon ask` does",
                            )
                            max_new_tokens = gr.Slider(
                                1, MAX_NEW_TOKENS, value=64, step=1, label="Longest answer (tokens)"
                            )
                        with gr.Column(scale=1):
                            chat = gr.Chatbot(label="Chat", height=320, elem_id="harmon-chat")
                            question = gr.Textbox(
                                label="Question", placeholder="what color is the circle?", elem_id="harmon-question"
                            )
                            with gr.Row():
                                ask_button = gr.Button("Ask", variant="primary", elem_id="harmon-ask")
                                clear = gr.Button("Clear chat")
                            gr.Examples(
                                [[examples["circle_square"], q] for q in ASK_QUESTIONS],
                                inputs=[ask_picture, question],
                                label="Examples",
                            )
                # -------------------------------------------------------------------------------------- Inpaint
                with gr.Tab("Inpaint / Outpaint", id="inpaint"):
                    if not self.supports("inpaint"):
                        gr.Markdown(self._why_not("inpaint"))
                    with gr.Row(visible=self.supports("inpaint")):
                        with gr.Column(scale=1):
                            in_picture = picture_input(
                                label="Picture", type="pil", image_mode=None, height=200, elem_classes=picture_classes
                            )
                            mode = gr.Radio(
                                ["Inpaint (paint the mask)", "Outpaint (add borders)"],
                                value="Inpaint (paint the mask)",
                                label="Mode",
                            )
                            with gr.Column(visible=True) as inpaint_group:
                                editor = mask_editor(
                                    label="Paint over what to redraw (a token is redrawn if any of its pixels is painted)",
                                    type="numpy",
                                    image_mode="RGBA",
                                    sources=(),
                                    transforms=(),
                                    layers=gr.LayerOptions(allow_additional_layers=False),
                                    brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"),
                                    canvas_size=(self.display_side, self.display_side),
                                    elem_classes=pixelated,
                                )
                                in_mask = picture_input(
                                    label="Mask",
                                    type="pil",
                                    image_mode=None,
                                    height=160,
                                    elem_classes=picture_classes,
                                    placeholder="Or upload a mask: the picture's size, white = redraw (it replaces the painting)",
                                )
                            with gr.Column(visible=False) as outpaint_group:
                                pad_max = max(stride, (self.max_side // 2) // stride * stride)
                                pads = [
                                    gr.Slider(0, pad_max, value=0, step=stride, label=side.capitalize())
                                    for side in ("left", "right", "top", "bottom")
                                ]
                            in_prompt = gr.Textbox(label="Prompt", placeholder=INPAINT_PROMPT, lines=2)
                            with gr.Row():
                                in_seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
                                in_random = gr.Checkbox(label="Random seed", value=False)
                            with gr.Accordion("Advanced", open=False):
                                in_steps = gr.Slider(
                                    0,
                                    max_tokens,
                                    value=0,
                                    step=1,
                                    label="MAR iterations",
                                    info="0: the model's, scaled by the share of tokens drawn",
                                )
                                in_cfg = gr.Slider(
                                    1.0, 10.0, value=defaults["guidance_scale"], step=0.05, label="Guidance scale"
                                )
                                in_temperature = gr.Slider(
                                    0.01, 2.0, value=defaults["temperature"], step=0.01, label="Temperature"
                                )
                                paste_back = gr.Checkbox(
                                    label="Paste the picture's own pixels back outside the mask", value=True
                                )
                            with gr.Row():
                                in_button = gr.Button("Redraw", variant="primary")
                                in_stop = gr.Button("Stop", variant="stop")
                            gr.Examples(
                                [[examples["circle_square"], examples["left_half_mask"], INPAINT_PROMPT]],
                                inputs=[in_picture, in_mask, in_prompt],
                                label="Example (redraw the left half)",
                            )
                        with gr.Column(scale=1):
                            in_result = gr.Image(
                                label="Result (live)",
                                type="pil",
                                format="png",
                                interactive=False,
                                elem_classes=pixelated,
                            )
                            in_status = gr.Markdown("")
                            in_file = gr.File(label="Download (the model's own pixels)", interactive=False)
                            with gr.Row():
                                in_again = gr.Button("Use the result as the picture", size="sm")
                                in_to_ask = gr.Button("Send to Ask", size="sm")
                                in_to_edit = gr.Button("Send to Edit", size="sm")
                            in_original = gr.State(None)
                # ----------------------------------------------------------------------------------------- Edit
                with gr.Tab("Edit", id="edit"):
                    if not self.supports("edit"):
                        gr.Markdown(self._why_not("edit"))
                    elif edit_training_warning(self.model.config) is None and self.tasks is None:
                        gr.Markdown(
                            "This model's config does not say whether it was trained for editing; a model that was "
                            "not draws a new picture rather than an edit."
                        )
                    with gr.Row(visible=self.supports("edit")):
                        with gr.Column(scale=1):
                            ed_picture = picture_input(
                                label="Picture", type="pil", image_mode=None, height=200, elem_classes=picture_classes
                            )
                            instruction = gr.Textbox(label="Instruction", placeholder=EDIT_INSTRUCTION, lines=2)
                            image_cfg = gr.Slider(
                                1.0,
                                10.0,
                                # the model's stored value; 1.5 (the README's) where it has none (1 = off)
                                value=defaults["image_guidance_scale"]
                                if defaults["image_guidance_scale"] != 1.0
                                else 1.5,
                                step=0.05,
                                label="Image guidance scale",
                                info="how closely to keep the picture (1 = off)",
                            )
                            ed_cfg = gr.Slider(
                                1.0,
                                10.0,
                                value=defaults["guidance_scale"],
                                step=0.05,
                                label="Guidance scale",
                                info="how strongly to follow the instruction (1 = off)",
                            )
                            with gr.Row():
                                ed_seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
                                ed_random = gr.Checkbox(label="Random seed", value=False)
                            with gr.Accordion("Advanced", open=False):
                                with gr.Row():
                                    ed_height = gr.Slider(
                                        stride, self.max_side, value=defaults["height"], step=stride, label="Height"
                                    )
                                    ed_width = gr.Slider(
                                        stride, self.max_side, value=defaults["width"], step=stride, label="Width"
                                    )
                                ed_steps = gr.Slider(
                                    1, max_tokens, value=defaults["num_iter"], step=1, label="MAR iterations"
                                )
                                ed_temperature = gr.Slider(
                                    0.01, 2.0, value=defaults["temperature"], step=0.01, label="Temperature"
                                )
                            with gr.Row():
                                ed_button = gr.Button("Edit", variant="primary")
                                ed_stop = gr.Button("Stop", variant="stop")
                            gr.Examples(
                                [[examples["circle_square"], EDIT_INSTRUCTION]],
                                inputs=[ed_picture, instruction],
                                label="Example",
                            )
                        with gr.Column(scale=1):
                            ed_result = gr.Image(
                                label="Result (live)",
                                type="pil",
                                format="png",
                                interactive=False,
                                elem_classes=pixelated,
                            )
                            ed_status = gr.Markdown("")
                            ed_file = gr.File(label="Download (the model's own pixels)", interactive=False)
                            with gr.Row():
                                ed_again = gr.Button("Continue editing the result", size="sm", variant="secondary")
                                ed_to_ask = gr.Button("Send to Ask", size="sm")
                                ed_to_inpaint = gr.Button("Send to Inpaint", size="sm")
                            ed_original = gr.State(None)
            gr.Markdown(
                f"Requests of all tabs wait in one queue of at most {self.queue_size} and the model draws one at a "
                f"time; when the queue is full the page says \u201c{BUSY_MESSAGE}\u201d. Images are at most "
                f"{self.max_side} px a side, {self.max_images} per request."
            )

            # ------------------------------------------------------------------------------------------ events
            def arm_and(triggers, fn, inputs, outputs, api_name, show_progress_on=None):
                """`fn` on the model's queue, after a Stop of this session is forgotten (see `_arm`)."""
                return gr.on(triggers, self._arm, None, None, queue=False, **private).then(
                    fn, inputs, outputs, api_name=api_name, show_progress_on=show_progress_on, **model_events
                )

            generate_inputs = [
                prompt,
                negative,
                seed,
                random_seed,
                count,
                height,
                width,
                preset,
                steps,
                head_steps,
                cfg,
                schedule,
                temperature,
            ]
            generate_outputs = [live, gallery, files, status, seed, originals]
            arm_and(
                [generate_button.click, prompt.submit],
                self.generate,
                generate_inputs,
                generate_outputs,
                "generate",
                show_progress_on=[gallery],
            )
            setting_fields = [steps, head_steps, cfg, schedule, temperature]
            preset.change(self._preset_values, preset, setting_fields, queue=False, **private)
            reset.click(
                lambda: (DEFAULTS_CHOICE, *self._preset_values(None)),
                None,
                [preset, *setting_fields],
                queue=False,
                **private,
            )
            for button, target in ((stop_button, status), (in_stop, in_status), (ed_stop, ed_status)):
                button.click(self._stop, None, target, queue=False, **private)

            def select(event: gr.SelectData):
                return event.index if isinstance(event.index, int) else 0

            gallery.select(select, None, selected, queue=False, **private)
            gallery.change(lambda: 0, None, selected, queue=False, **private)

            def pick(images, index):
                if not images:
                    raise _error("Generate an image first.")
                return images[index if isinstance(index, int) and 0 <= index < len(images) else 0]

            def sender(tab):
                def send(images, index):
                    return pick(images, index), gr.Tabs(selected=tab)

                return send

            to_ask.click(sender("ask"), [originals, selected], [ask_picture, tabs], queue=False, **private)
            to_edit.click(sender("edit"), [originals, selected], [ed_picture, tabs], queue=False, **private)
            to_inpaint.click(sender("inpaint"), [originals, selected], [in_picture, tabs], queue=False, **private)

            ask_inputs = [ask_picture, question, chat, use_history, max_new_tokens]
            ask_button.click(self.ask, ask_inputs, [chat, question], api_name="ask", **model_events)
            question.submit(self.ask, ask_inputs, [chat, question], **private, **model_events)
            clear.click(lambda: [], None, chat, queue=False, **private)

            mode.change(
                lambda value: (
                    gr.Column(visible=not value.startswith("Outpaint")),
                    gr.Column(visible=value.startswith("Outpaint")),
                ),
                mode,
                [inpaint_group, outpaint_group],
                queue=False,
                **private,
            )
            in_picture.change(self._editor_value, in_picture, editor, queue=False, **private)
            inpaint_inputs = [
                in_picture,
                mode,
                editor,
                in_mask,
                *pads,
                in_prompt,
                in_seed,
                in_random,
                in_steps,
                in_cfg,
                in_temperature,
                paste_back,
            ]
            arm_and(
                [in_button.click],
                self.inpaint,
                inpaint_inputs,
                [in_result, in_file, in_status, in_seed, in_original],
                "inpaint",
            )

            def result_or_error(result):
                if result is None:
                    raise _error("There is no result yet.")
                return result

            in_again.click(lambda result: result_or_error(result), in_original, in_picture, queue=False, **private)
            in_to_ask.click(
                lambda result: (result_or_error(result), gr.Tabs(selected="ask")),
                in_original,
                [ask_picture, tabs],
                queue=False,
                **private,
            )
            in_to_edit.click(
                lambda result: (result_or_error(result), gr.Tabs(selected="edit")),
                in_original,
                [ed_picture, tabs],
                queue=False,
                **private,
            )

            edit_inputs = [
                ed_picture,
                instruction,
                image_cfg,
                ed_cfg,
                ed_seed,
                ed_random,
                ed_height,
                ed_width,
                ed_steps,
                ed_temperature,
            ]
            arm_and(
                [ed_button.click],
                self.edit,
                edit_inputs,
                [ed_result, ed_file, ed_status, ed_seed, ed_original],
                "edit",
            )
            ed_again.click(
                lambda result: (result_or_error(result), ""),
                ed_original,
                [ed_picture, instruction],
                queue=False,
                **private,
            )
            ed_to_ask.click(
                lambda result: (result_or_error(result), gr.Tabs(selected="ask")),
                ed_original,
                [ask_picture, tabs],
                queue=False,
                **private,
            )
            ed_to_inpaint.click(
                lambda result: (result_or_error(result), gr.Tabs(selected="inpaint")),
                ed_original,
                [in_picture, tabs],
                queue=False,
                **private,
            )
        blocks.queue(max_size=self.queue_size, default_concurrency_limit=1)
        return blocks


# ----------------------------------------------------------------------------------------------- loading
def load_for_demo(source: str | None, trust_remote_code: bool = False, device: str | None = None, dtype=torch.float32):
    """(model, tokenizer, processor) of `source` (None: the embedded default model) for the demo. Without
    `trust_remote_code`, this package's classes load it and no code from the folder or repo runs; with it,
    transformers may run the repo's own `modeling_*.py` (its `auto_map`)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if source is None:
        model, tokenizer = load_default_model(device=device, dtype=dtype)
    elif trust_remote_code:
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(source, dtype=dtype, trust_remote_code=True).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
    else:
        model, tokenizer = load_model_and_tokenizer(source, device=device, dtype=dtype)
    return model, tokenizer, load_processor(source, model, tokenizer)


def launch_options(host: str | None = None, port: int | None = None, share: bool = False) -> dict:
    """`gr.Blocks.launch` options of the demo: offline (no analytics, run history, server-side rendering or remote
    fonts), errors shown in the page, uploads bounded. `host` None: Gradio's GRADIO_SERVER_NAME, else 127.0.0.1."""
    return {
        "server_name": host,
        "server_port": port,
        "share": share,
        "show_error": True,
        "max_file_size": MAX_UPLOAD,
        "ssr_mode": False,
        "pwa": False,
        "mcp_server": False,
        "run_history": False,
        "footer_links": ["api", "settings"],
        "theme": theme(),
        "css": CSS,
    }


def launch(
    demo: "HarmonDemo | gr.Blocks", host: str | None = None, port: int | None = None, share: bool = False, **options
):
    """Launch `demo` with [`launch_options`] (`options`: more `gr.Blocks.launch` arguments, e.g.
    `prevent_thread_lock=True`)."""
    blocks = demo.blocks if isinstance(demo, HarmonDemo) else demo
    return blocks.launch(**{**launch_options(host, port, share), **options})


__all__ = ["HarmonDemo", "enlarge", "launch", "launch_options", "load_for_demo", "theme"]
