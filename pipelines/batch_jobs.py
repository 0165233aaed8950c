"""The resumable batch mode of `harmon generate --prompts`, as parts that other output layouts (GenEval, DPG-Bench)
reuse instead of copying:

    jobs = read_jobs(Path("prompts.jsonl"), seed=0, num_images=4)   # every line checked, before the model loads
    jobs = resolve_jobs(jobs, model)                                # settings filled in and checked by the model
    run_jobs(jobs, Layout(Path("images")), model, tokenizer, num_images=4, batch_size=8)

A [`Job`] is one line: a prompt, a seed, its settings and, for an image line, a [`Canvas`] (the picture and the mask,
padding or strength of `harmon inpaint` / `outpaint` / `vary`) or, for an edit line, an [`Edit`] (the pictures and
optional mask of `harmon edit`). Code may also build jobs itself (one per benchmark
prompt). A [`Layout`] says where image k of a job goes (`stem`) and what its JSON sidecar adds (`sidecar_fields`).
[`run_jobs`] plans the batches from the whole list (so the files do not depend on the number of processes), skips
images whose sidecar matches what it would draw now, refuses those whose sidecar records other inputs (or redraws
them, with `overwrite`), and draws the rest of this process's share. The file format is `cli.JOBS_FORMAT`.
"""

import dataclasses
import hashlib
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from modeling_harmon.atomic_files import write_json
from modeling_harmon.modeling_harmon_canvas import outpaint_canvas, redraw_count, redraw_tokens
from modeling_harmon.modeling_harmon_settings import HarmonSettingError

from .cli import (
    MAX_SEED,
    MAX_SIDE,
    SETTINGS,
    CommandError,
    HarmonPipeline,
    _model_name,
    _show,
    _size,
    check_size,
    check_writable_folder,
    draw,
    image_metadata,
    read_image,
    regular_file,
    resolve_settings,
    save,
)
from .cli_canvas import SIDES, HarmonInpaintPipeline
from .cli_edit import HarmonImageEditPipeline, edit_training_warning


TEXT_KEYS = ("prompt", "seed", *SETTINGS)
CANVAS_KEYS = ("image", "mask", *SIDES, "strength", "paste_back")
EDIT_KEYS = ("edit", "image_cfg")  # "edit" makes a line an edit line, which may add "mask"
JOB_KEYS = (*TEXT_KEYS, *CANVAS_KEYS, *EDIT_KEYS)
# The key that makes an image line an inpaint, outpaint or vary line.
MODE_KEYS = {"mask": "inpaint", **dict.fromkeys(SIDES, "outpaint"), "strength": "vary"}
MODE_NAMES = 'inpaint ("mask"), outpaint ("left"/"right"/"top"/"bottom") or vary ("strength")'


# ------------------------------------------------------------------------------------------------------- jobs
@dataclasses.dataclass(frozen=True)
class InputFile:
    """An input file of a line: its path, the path as the line gives it (recorded), the SHA-256 of its bytes
    (recorded, so a resume notices other bytes under the same name) and its size in pixels (width, height)."""

    path: Path
    given: str
    sha256: str
    size: tuple[int, int]

    @classmethod
    def read(cls, path: Path, given: str, shown: str) -> "InputFile":
        """Hash and decode the file once (`shown` names it in errors, e.g. `x.jsonl line 3: "mask"`)."""
        data = _read_bytes(path, shown)
        image = read_image(path, shown, data=data)
        return cls(path, given, hashlib.sha256(data).hexdigest(), image.size)

    def load(self, shown: str):
        """The picture, provided the file still holds the bytes hashed when the line was read: what is drawn is
        what the sidecar records."""
        data = _read_bytes(self.path, shown)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise CommandError(
                f"{shown} {str(self.path)!r} changed while the batch ran (other bytes than when the file was read); "
                "run the command again"
            )
        return read_image(self.path, shown, data=data)


def _read_bytes(path: Path, shown: str) -> bytes:
    regular_file(path, f"{shown} {str(path)!r}")
    try:
        return path.read_bytes()
    except OSError as error:
        raise CommandError(f"{shown} {str(path)!r} cannot be read ({error.strerror or error})") from None


@dataclasses.dataclass(frozen=True)
class Canvas:
    """What an image line starts from, as the `inpaint`, `outpaint` and `vary` commands take it. `tokens`: the tokens
    each image redraws, known once the model's stride is (`resolve_jobs`, which checks "steps" against it)."""

    mode: str  # "inpaint", "outpaint" or "vary"
    image: InputFile
    mask: InputFile | None = None
    pads: dict = dataclasses.field(default_factory=dict)  # outpaint: pixels added on each of SIDES
    strength: float | None = None  # vary
    paste_back: bool | None = None  # inpaint, outpaint
    tokens: int | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of what is drawn: the picture plus any padding."""
        width, height = self.image.size
        pads = self.pads
        return height + pads.get("top", 0) + pads.get("bottom", 0), width + pads.get("left", 0) + pads.get("right", 0)

    def inputs(self) -> dict:
        """The `inputs` record, as the single commands write it: each file as given with its SHA-256, the padding."""
        inputs = {"image": self.image.given, "image_sha256": self.image.sha256}
        if self.mask is not None:
            inputs.update(mask=self.mask.given, mask_sha256=self.mask.sha256)
        inputs.update(self.pads)
        return inputs

    def arguments(self) -> dict:
        """The pipeline arguments besides the pictures (recorded too)."""
        return {"strength": self.strength} if self.mode == "vary" else {"paste_back": self.paste_back}

    def pictures(self, stride: int, where: str):
        """(image, mask) for `HarmonInpaintPipeline`: the picture and mask, the padded canvas and its mask, or the
        picture alone."""
        image = self.image.load(f'{where}: "image"')
        if self.mode == "outpaint":
            return outpaint_canvas(image, stride, **self.pads)
        return image, None if self.mask is None else self.mask.load(f'{where}: "mask"')


@dataclasses.dataclass(frozen=True)
class Edit:
    """What an edit line starts from, as `harmon edit` takes it: the pictures the instruction is about (the first is the
    one edited, the others further pictures the model sees), an optional mask (an edit inside it: the first picture is
    then also the canvas) and the line's "image_cfg" (None: the model's). `tokens`: with a mask, the tokens each image
    redraws, known once the model's stride is (`resolve_jobs`)."""

    sources: tuple[InputFile, ...]
    mask: InputFile | None = None
    image_cfg: float | None = None
    tokens: int | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the first picture: what an edit inside a mask draws."""
        width, height = self.sources[0].size
        return height, width

    def inputs(self) -> dict:
        """The `inputs` record, as `harmon edit` writes it: the pictures as given with their SHA-256, and the mask."""
        inputs = {"edit": [source.given for source in self.sources], "edit_sha256": [s.sha256 for s in self.sources]}
        if self.mask is not None:
            inputs.update(mask=self.mask.given, mask_sha256=self.mask.sha256)
        return inputs

    def pictures(self, where: str) -> list:
        """The pictures for `HarmonImageEditPipeline`, each checked against the hash recorded when the line was read."""
        return [source.load(f'{where}: "edit"') for source in self.sources]


@dataclasses.dataclass(frozen=True)
class Job:
    """One line of a jobs file (or one prompt of a benchmark). `options`: settings as `cli.SETTINGS` keys (None: the
    model's default); `settings`: the pipeline's arguments, filled in by `resolve_jobs`; `fields`: the line's keys
    the caller allowed beyond `JOB_KEYS` (e.g. a benchmark's tags), as given; `source`: the file, for messages;
    `edit`: an edit line's pictures (then `canvas` is None)."""

    line: int
    prompt: str
    seed: int
    options: dict = dataclasses.field(default_factory=dict)
    canvas: Canvas | None = None
    fields: dict = dataclasses.field(default_factory=dict)
    source: str = "jobs"
    settings: dict | None = None
    edit: Edit | None = None

    @property
    def where(self) -> str:
        return f"{self.source} line {self.line}"

    def metadata(self, k: int, model_name: str) -> dict:
        """What reproduces image k (the PNG's `harmon` chunk): as `harmon generate` records it, and for an image line
        as `harmon inpaint` / `outpaint` / `vary` do."""
        metadata = image_metadata(self.prompt, self.seed + k, self.settings, model_name)
        if self.canvas is not None:
            canvas = self.canvas
            metadata.update(mode=canvas.mode, prompt_source="given", inputs=canvas.inputs(), **canvas.arguments())
        if self.edit is not None:
            metadata.update(mode="edit", inputs=self.edit.inputs())
        return metadata

    def batch_key(self) -> tuple:
        """Jobs drawn in one model call agree on this: the settings, and for image lines the mode, arguments and
        the picture itself (its bytes, mask and padding). `generate_images` would take one picture per image (of one
        size, each redrawing as many tokens), but `HarmonInpaintPipeline` reads the size of a list of PIL pictures
        with `hasattr(image, "size")`, which a list lacks; so lines of other pictures go to other calls. Edit lines
        take one list of pictures per image, so only their mask (one per call) must agree."""
        if self.edit is not None:
            return self.settings, ("edit", self.edit.mask and self.edit.mask.sha256)
        canvas = self.canvas
        if canvas is None:
            return self.settings, None
        picture = (canvas.image.sha256, canvas.mask and canvas.mask.sha256, tuple(canvas.pads.items()))
        return self.settings, (canvas.mode, canvas.strength, canvas.paste_back, picture)


def read_jobs(
    path: Path,
    *,
    seed: int = 0,
    num_images: int = 1,
    options: dict | None = None,
    max_side: int = MAX_SIDE,
    extra_keys: tuple[str, ...] = (),
    flag: str = "--prompts",
) -> list[Job]:
    """The jobs of the JSONL file `path`, checked as far as possible without the model: every key's value, and for
    image lines the files (read, hashed, decoded; paths relative to the file's folder) and the canvas size. `seed`,
    `options` (settings as `SETTINGS` keys) and `max_side` are the command's; `extra_keys`: further keys a caller
    accepts (kept in `Job.fields`); `flag` names the file in errors. Errors name the file, line and key."""
    shown = f"{flag} {str(path)!r}"
    regular_file(path, shown)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise CommandError(f"{shown} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    defaults = {key: (options or {}).get(key) for key in SETTINGS}
    allowed = (*JOB_KEYS, *extra_keys)
    files = {}  # path -> InputFile: a picture several lines share is read once
    jobs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise CommandError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(entry, dict):
            raise CommandError(f'{where}: expected a JSON object like {{"prompt": "..."}}, got {type(entry).__name__}')
        unknown = sorted(set(entry) - set(allowed))
        if unknown:
            raise CommandError(f"{where}: unknown keys {unknown}; allowed: {list(allowed)}")
        prompt = entry.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise CommandError(f'{where}: "prompt" must be a non-empty string, got {prompt!r}')
        job_seed = entry.get("seed", seed)
        if (
            isinstance(job_seed, bool)
            or not isinstance(job_seed, int)
            or not 0 <= job_seed <= MAX_SEED - num_images + 1
        ):
            raise CommandError(f'{where}: "seed" must be an integer in [0, 2**64 - n], got {job_seed!r}')
        for key in SETTINGS:
            if isinstance(entry.get(key), bool):  # JSON true is no step count (Python would take it for 1)
                kind = '"HxW" or a number' if key == "size" else "a number"
                raise CommandError(f'{where}: "{key}" must be {kind}, got {json.dumps(entry[key])}')
        job_options = {key: entry.get(key, defaults[key]) for key in SETTINGS}
        edit = _read_edit(entry, where, path.parent, files)
        canvas = None if edit is not None else _read_canvas(entry, where, path.parent, files)
        if edit is not None and edit.mask is not None:
            if "size" in entry:
                raise CommandError(
                    f'{where}: "size" does not apply to an edit line with a "mask": what is drawn has the size of the '
                    'first "edit" picture; leave it out'
                )
            job_options["size"] = None
            check_size(edit.size, max_side, f"{where}: {_describe_edit(edit)}")
        elif canvas is not None:
            # The picture sets the size: a "size" could only repeat it or contradict it.
            if "size" in entry:
                raise CommandError(
                    f'{where}: "size" does not apply to an image line: what is drawn has the size of "image" (plus '
                    "any padding); leave it out"
                )
            job_options["size"] = None
            check_size(canvas.size, max_side, f"{where}: {_describe_canvas(canvas)}")
        else:
            if "size" in entry:
                try:
                    job_options["size"] = _size(entry["size"])
                except ValueError as error:
                    raise CommandError(f"{where}: {error}") from None
            size = job_options["size"]
            check_size(size, max_side, f'{where}: "size" {_show("size", size)}')
        fields = {key: entry[key] for key in extra_keys if key in entry}
        jobs.append(Job(number, prompt, job_seed, job_options, canvas, fields, str(path), edit=edit))
    if not jobs:
        raise CommandError(f"{shown} holds no prompts")
    return jobs


def _read_canvas(entry: dict, where: str, base: Path, files: dict) -> Canvas | None:
    """The canvas of an image line (None for a text line); its mode follows from its keys."""
    given = [key for key in CANVAS_KEYS if key in entry]
    if not given:
        return None
    if "image" not in entry:
        raise CommandError(f'{where}: "{given[0]}" needs "image" (the picture to inpaint, outpaint or vary)')
    modes = {}
    for key in given:
        if key in MODE_KEYS:
            modes.setdefault(MODE_KEYS[key], key)
    if not modes:
        raise CommandError(f'{where}: "image" needs a mode: {MODE_NAMES}')
    if len(modes) > 1:
        (first, one), (second, other) = list(modes.items())[:2]
        raise CommandError(
            f'{where}: "{one}" ({first}) and "{other}" ({second}) cannot be combined; a line is one of {MODE_NAMES}'
        )
    mode = next(iter(modes))
    for key in ("image", "mask"):
        value = entry.get(key, "x")
        if not isinstance(value, str) or not value.strip():
            raise CommandError(f'{where}: "{key}" must be a file path (a non-empty string), got {json.dumps(value)}')
    pads = {}
    if mode == "outpaint":
        for side in SIDES:
            value = entry.get(side, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CommandError(f'{where}: "{side}" must be a whole number of pixels >= 0, got {json.dumps(value)}')
            pads[side] = value
        if not any(pads.values()):
            raise CommandError(
                f'{where}: "{modes[mode]}" is 0: outpaint needs "left", "right", "top" or "bottom" > 0 (pixels to add)'
            )
    strength = entry.get("strength")
    if mode == "vary":
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise CommandError(f'{where}: "strength" must be a number in [0, 1], got {json.dumps(strength)}')
        strength = float(strength)
    paste_back = entry.get("paste_back", True) if mode != "vary" else None
    if "paste_back" in entry:
        if mode == "vary":
            raise CommandError(f'{where}: "paste_back" applies to inpaint and outpaint lines (a mask), not to vary')
        if not isinstance(paste_back, bool):
            raise CommandError(f'{where}: "paste_back" must be true or false, got {json.dumps(paste_back)}')

    def input_file(key: str) -> InputFile:
        path = base / entry[key]  # an absolute path stays as it is
        if path not in files:
            files[path] = InputFile.read(path, entry[key], f'{where}: "{key}"')
        return dataclasses.replace(files[path], given=entry[key])  # recorded as this line gives it

    image = input_file("image")
    mask = input_file("mask") if mode == "inpaint" else None
    if mask is not None and mask.size != image.size:
        raise CommandError(
            f'{where}: "mask" is {mask.size[0]}x{mask.size[1]} pixels but "image" is '
            f"{image.size[0]}x{image.size[1]}; they must be the same size"
        )
    return Canvas(mode, image, mask, pads, strength, paste_back)


def _read_edit(entry: dict, where: str, base: Path, files: dict) -> Edit | None:
    """The pictures of an edit line (None for other lines): "edit" (a path or a list), an optional "mask" and
    "image_cfg"."""
    if "edit" not in entry:
        if "image_cfg" in entry:
            raise CommandError(f'{where}: "image_cfg" needs "edit" (the picture the instruction is about)')
        return None
    others = [key for key in CANVAS_KEYS if key in entry and key != "mask"]
    if others:
        raise CommandError(
            f'{where}: "edit" and "{others[0]}" cannot be combined; an edit line names its pictures in "edit" (the '
            'first is the one edited) and may add "mask"'
        )
    value = entry["edit"]
    given = [value] if isinstance(value, str) else value
    if not isinstance(given, list) or not given or not all(isinstance(item, str) and item.strip() for item in given):
        raise CommandError(
            f'{where}: "edit" must be a file path or a non-empty list of file paths, got {_clip(value)}'
        )
    mask = entry.get("mask")
    if "mask" in entry and (not isinstance(mask, str) or not mask.strip()):
        raise CommandError(f'{where}: "mask" must be a file path (a non-empty string), got {json.dumps(mask)}')
    scale = entry.get("image_cfg")
    if "image_cfg" in entry and (
        isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 1
    ):
        raise CommandError(
            f'{where}: "image_cfg" must be a finite number >= 1 (1 disables image guidance), got {json.dumps(scale)}'
        )
    sources = tuple(
        _input_file(base, item, f'{where}: "edit"' if len(given) == 1 else f'{where}: "edit"[{index}]', files)
        for index, item in enumerate(given)
    )
    mask = None if mask is None else _input_file(base, mask, f'{where}: "mask"', files)
    if mask is not None and mask.size != sources[0].size:
        raise CommandError(
            f'{where}: "mask" is {mask.size[0]}x{mask.size[1]} pixels but the first "edit" picture is '
            f"{sources[0].size[0]}x{sources[0].size[1]}; they must be the same size"
        )
    return Edit(sources, mask, None if scale is None else float(scale))


def _input_file(base: Path, given: str, shown: str, files: dict) -> InputFile:
    """The input file `given` by a line (relative to `base` unless absolute), read once however many lines name it."""
    path = base / given
    if path not in files:
        files[path] = InputFile.read(path, given, shown)
    return dataclasses.replace(files[path], given=given)  # recorded as this line gives it


def _describe_edit(edit: Edit) -> str:
    """The canvas of an edit inside a mask, for errors about its size."""
    width, height = edit.sources[0].size
    return f'the first "edit" picture {edit.sources[0].given!r} ({width}x{height} pixels: {width} wide, {height} high)'


def _describe_canvas(canvas: Canvas) -> str:
    """The canvas as the line defines it, for errors about its size (sides in pixels, width first as PIL says)."""
    height, width = canvas.size
    what = f'"image" {canvas.image.given!r} ({canvas.image.size[0]}x{canvas.image.size[1]} pixels)'
    padding = "".join(f', "{side}" {canvas.pads[side]}' for side in SIDES if canvas.pads.get(side))
    return f"the canvas of {what}{padding} ({width} pixels wide, {height} high)"


def resolve_jobs(jobs: list[Job], model, *, sampling: str | None = None, max_side: int = MAX_SIDE) -> list[Job]:
    """`jobs` with every setting filled in from the model and validated by it, and for image lines the stride, the
    canvas size and the tokens to draw checked; errors name the file, line and key. Nothing is drawn."""
    stride = model.config.vae_stride * model.config.patch_size
    masks = {}  # (mask file, its hash, stride) -> tokens it selects: a mask several lines share is read once
    resolved = []
    for job in jobs:
        options, where, canvas, edit = dict(job.options), job.where, job.canvas, job.edit
        masked_edit = edit is not None and edit.mask is not None
        if canvas is not None:
            _check_stride(canvas, stride, where)
            options["size"] = canvas.size
        if masked_edit:
            width, height = edit.sources[0].size
            if width % stride or height % stride:
                raise CommandError(
                    f'{where}: {_describe_edit(edit)}: with a "mask" its sides must be multiples of {stride} (the '
                    "model's token stride): resize or crop it"
                )
            options["size"] = edit.size

        def describe(key: str) -> str:
            if key == "size" and canvas is not None:
                return f"{where}: {_describe_canvas(canvas)}"
            if key == "size" and masked_edit:
                return f"{where}: {_describe_edit(edit)}"
            return f'{where}: "{key}" {_show(key, options[key])}'

        settings = resolve_settings(model, options, describe, sampling)
        if edit is not None:
            try:
                scale = model.image_generation_settings(sampling, image_guidance_scale=edit.image_cfg)
            except HarmonSettingError as error:
                raise CommandError(f'{where}: "image_cfg" {_show("image_cfg", edit.image_cfg)}: {error}') from None
            settings["image_guidance_scale"] = scale.image_guidance_scale
            settings["edit_mode"] = scale.edit_mode  # the model's, as `harmon edit` without --edit-mode
            if scale.edit_mode == "direct" and options.get("candidates") is None:
                del settings["candidates"]  # the model's count ranks drawings of text; a direct edit draws once
            if scale.edit_mode == "describe" and scale.image_guidance_scale != 1.0:
                if edit.image_cfg is not None:
                    raise CommandError(
                        f'{where}: "image_cfg" {_show("image_cfg", edit.image_cfg)}: guides the picture while drawing; '
                        "this model edits by describing the result (edit_mode describe), so leave it out"
                    )
                settings["image_guidance_scale"] = 1.0  # the model's stored scale is for its direct mode
        if masked_edit:
            edit = dataclasses.replace(edit, tokens=_mask_tokens(edit.mask, edit.size, stride, where, masks))
            steps = settings["num_inference_steps"]
            if options["steps"] is None:  # the model scales its iterations by the share of tokens drawn
                settings["num_inference_steps"] = None
            elif steps > edit.tokens:
                raise CommandError(
                    f'{where}: "steps" {steps}: num_iter must be an integer in [1, {edit.tokens}] (the tokens this '
                    "line draws)"
                )
        elif canvas is None:
            size = (settings["height"], settings["width"])
            check_size(size, max_side, f'{where}: "size" (the model\'s default, {_show("size", size)})')
        else:
            canvas = dataclasses.replace(canvas, tokens=_tokens(canvas, stride, where, masks))
            steps = settings["num_inference_steps"]
            if options["steps"] is None:  # the model scales its iterations by the share of tokens drawn
                settings["num_inference_steps"] = None
            elif canvas.tokens and steps > canvas.tokens:
                raise CommandError(
                    f'{where}: "steps" {steps}: num_iter must be an integer in [1, {canvas.tokens}] (the tokens this '
                    "line draws)"
                )
        resolved.append(dataclasses.replace(job, settings=settings, canvas=canvas, edit=edit))
    return resolved


def _check_stride(canvas: Canvas, stride: int, where: str) -> None:
    width, height = canvas.image.size
    if width % stride or height % stride:
        raise CommandError(
            f'{where}: "image" {str(canvas.image.path)!r} is {width}x{height} pixels; its sides must be multiples of '
            f"{stride} (the model's token stride): resize or crop it"
        )
    for side in SIDES:
        if canvas.pads.get(side, 0) % stride:
            raise CommandError(
                f'{where}: "{side}" must be a multiple of {stride} pixels (the model\'s token stride), got '
                f"{canvas.pads[side]}"
            )


def _tokens(canvas: Canvas, stride: int, where: str, masks: dict) -> int:
    """The tokens each image of the line redraws (as the model counts them)."""
    height, width = canvas.size
    seq_len = (height // stride) * (width // stride)
    if canvas.mode == "vary":
        return redraw_count(canvas.strength, seq_len)
    if canvas.mode == "outpaint":
        return seq_len - (canvas.image.size[0] // stride) * (canvas.image.size[1] // stride)
    return _mask_tokens(canvas.mask, canvas.size, stride, where, masks)


def _mask_tokens(mask: InputFile, size: tuple[int, int], stride: int, where: str, masks: dict) -> int:
    """The tokens `mask` redraws on a canvas of `size` (height, width); an all-black mask is refused."""
    key = (mask.path, mask.sha256, stride)
    if key not in masks:
        masks[key] = int(redraw_tokens(mask.load(f'{where}: "mask"'), *size, stride).sum())
    if not masks[key]:
        raise CommandError(
            f'{where}: "mask" {mask.given!r} selects no token to redraw (it is black everywhere); white marks what to '
            "redraw"
        )
    return masks[key]


def plan_batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Consecutive jobs, at most `batch_size` per batch, a new batch wherever `Job.batch_key` changes (settings; for
    image lines also mode, strength, paste_back and picture). The plan depends on the jobs and `batch_size` only, so
    every process count and every rerun draws the same batches."""
    batches = []
    for job in jobs:
        if batches and len(batches[-1]) < batch_size and batches[-1][0].batch_key() == job.batch_key():
            batches[-1].append(job)
        else:
            batches.append([job])
    return batches


# --------------------------------------------------------------------------------------------------- outputs
def default_stem(job: Job, k: int) -> str:
    """`harmon generate`'s names: LLLLL_k (the line, 1-based, and the image)."""
    return f"{job.line:05d}_{k}"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the images of a batch run go. `stem(job, k)`: image k's path under `outdir` without suffix (may hold
    folders); the PNG is STEM.png, its sidecar STEM.json. `sidecar_fields(job, k)`: fields added to the sidecar after
    `line` and `image` (JSON values; compared on resume like the rest). `flag` names `outdir` in messages."""

    outdir: Path
    stem: Callable[[Job, int], str | Path] = default_stem
    sidecar_fields: Callable[[Job, int], dict] | None = None
    flag: str = "--outdir"

    @property
    def shown(self) -> str:
        return f"{self.flag} {str(self.outdir)!r}"

    def image_path(self, job: Job, k: int) -> Path:
        return self.outdir / f"{self.stem(job, k)}.png"

    def sidecar_path(self, job: Job, k: int) -> Path:
        return self.outdir / f"{self.stem(job, k)}.json"

    def record(self, job: Job, k: int, model_name: str) -> dict:
        """The sidecar of image k: its metadata, `line`, `image` and the caller's fields."""
        record = {**job.metadata(k, model_name), "line": job.line, "image": k}
        extra = self.sidecar_fields(job, k) if self.sidecar_fields else {}
        clash = sorted(set(extra) & set(record))
        if clash:
            raise ValueError(f"sidecar_fields must not replace the recorded fields {clash}")
        return {**record, **extra}

    def check(self) -> None:
        """Refuse an `outdir` that is a file or cannot be created, before the model loads."""
        if self.outdir.exists() and not self.outdir.is_dir():
            raise CommandError(f"{self.shown} is a file; give a folder")
        check_writable_folder(self.outdir, self.shown)


def read_sidecar(path: Path) -> dict | None:
    """The record of a sidecar JSON, or None where it is missing or unreadable (its image counts as unfinished)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, not UTF-8, not JSON
        return None
    return record if isinstance(record, dict) else None


def first_difference(record: dict, expected: dict) -> str | None:
    """The first field (e.g. "prompt", "settings.guidance_scale", "inputs.mask_sha256") where a sidecar `record`
    differs from the `expected` one, or None where they agree."""
    expected = json.loads(json.dumps(expected))  # as the sidecar stores it (floats, lists)
    for key, value in expected.items():
        stored = record.get(key)
        if isinstance(stored, dict) and isinstance(value, dict):
            name = next((name for name in {**value, **stored} if stored.get(name) != value.get(name)), None)
            if name is not None:
                return f"{key}.{name}"
        elif stored != value:
            return key
    return None


def _clip(value, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def scan_outputs(jobs: list[Job], layout: Layout, num_images: int, model_name: str):
    """(finished, changed): the PNG paths of the images whose PNG is there and whose sidecar records what would be
    drawn now, and (job, k, stored record, first differing field) of those whose sidecar records something else."""
    finished, changed = set(), []
    for job in jobs:
        for k in range(num_images):
            image, sidecar = layout.image_path(job, k), layout.sidecar_path(job, k)
            stored = read_sidecar(sidecar) if image.is_file() else None
            difference = None if stored is None else first_difference(stored, layout.record(job, k, model_name))
            if stored is not None and difference is None:
                finished.add(image)
            elif difference is not None:
                changed.append((job, k, stored, difference))
    return finished, changed


def _refusal(layout: Layout, changed: list, model_name: str) -> str:
    job, k, stored, field = changed[0]
    now = layout.record(job, k, model_name)
    parent, _, name = field.partition(".")
    if not name or not isinstance(now.get(parent), dict):  # a top-level field (whose name may hold a dot)
        parent, name = "", field
    old, new = (stored.get(parent, {}), now[parent]) if parent else (stored, now)
    first = layout.image_path(job, k).relative_to(layout.outdir)
    if (
        parent == "inputs"
        and name.endswith("_sha256")
        and old.get(name.removesuffix("_sha256")) == new.get(name.removesuffix("_sha256"))
    ):
        key = name.removesuffix("_sha256")
        shown, then, now = new[key], old.get(name), new[name]
        if isinstance(shown, list) and isinstance(then, list):  # an edit line's pictures: name the one that changed
            index = next((i for i, pair in enumerate(zip(then, now)) if pair[0] != pair[1]), 0)
            shown, then, now = shown[index], then[index] if index < len(then) else None, now[index]
        what = (
            f'{field}: the file {shown!r} ("{key}" of line {job.line}) holds other bytes than when the image was '
            f"drawn (SHA-256 {str(then)[:12]}... then, {now[:12]}... now)"
        )
    else:
        what = f"{field} {_clip(old.get(name))} then, {_clip(new.get(name))} now"
    return (
        f"{layout.shown}: {len(changed)} image(s) were drawn with other inputs than they would be now (first: "
        f"{first}, {what}); pass --overwrite to redraw them, or use another {layout.flag}"
    )


def draw_jobs(pipes: dict, batch: list[Job], num_images: int) -> list:
    """The images of `batch` (job-major, num_images each) from one model call, as `harmon generate` and, for image
    lines, `harmon inpaint` / `outpaint` / `vary` draw them (a batch of image lines shares one picture: see
    `Job.batch_key`). `pipes`: a dict holding `model` and `tokenizer`, where the pipelines are kept once built."""
    model, tokenizer = pipes["model"], pipes["tokenizer"]
    prompts = [job.prompt for job in batch for _ in range(num_images)]
    seeds = [job.seed + k for job in batch for k in range(num_images)]
    first = batch[0]
    kind = "edit" if first.edit is not None else "text" if first.canvas is None else "canvas"
    if kind not in pipes:
        classes = {"text": HarmonPipeline, "canvas": HarmonInpaintPipeline, "edit": HarmonImageEditPipeline}
        pipes[kind] = classes[kind](model=model, tokenizer=tokenizer)
        pipes[kind].set_progress_bar_config(disable=True)  # one bar over images, not one per batch
        warning = edit_training_warning(model.config) if kind == "edit" else None
        if warning is not None:  # one line, once per run, not Python's two-line warning
            print(f"warning: {warning}", file=sys.stderr)
            pipes[kind]._warned_untrained = True
    if kind == "edit":
        mask = first.edit.mask and first.edit.mask.load(f'{first.where}: "mask"')  # one per batch: see batch_key
        pictures = {id(job): job.edit.pictures(job.where) for job in batch}
        images = [pictures[id(job)] for job in batch for _ in range(num_images)]
        try:
            return draw(pipes[kind], prompts, seeds, first.settings, image=images, mask_image=mask)
        except ValueError as error:
            lines = ", ".join(str(job.line) for job in batch)
            raise CommandError(f"{first.source} line(s) {lines}: {error}") from None
    if first.canvas is None:
        return draw(pipes[kind], prompts, seeds, first.settings)
    image, mask = first.canvas.pictures(pipes[kind].vae_scale_factor, first.where)
    try:
        return draw(
            pipes[kind], prompts, seeds, first.settings, image=image, mask_image=mask, **first.canvas.arguments()
        )
    except ValueError as error:
        lines = ", ".join(str(job.line) for job in batch)
        raise CommandError(f"{first.source} line(s) {lines}: {error}") from None


def run_jobs(
    jobs: list[Job],
    layout: Layout,
    model,
    tokenizer,
    *,
    num_images: int = 1,
    batch_size: int = 1,
    overwrite: bool = False,
    rank: int = 0,
    world_size: int = 1,
    write_sidecar: Callable[[dict, Path], None] = write_json,
) -> int:
    """Draw this process's share (batch i goes to rank i % world_size) of the images of `jobs` (resolved) that are
    not finished; returns how many were written. The sidecar goes after the PNG, both atomically, and the old sidecar
    first of all, so a sidecar marks a finished image however the process ends. A batch with any image missing is
    drawn again in full and only the missing images are written, so a resumed run gives the files of an
    uninterrupted one. Every process checks every image, so all of them refuse (or redraw) the same changed ones."""
    n = num_images
    model_name = _model_name(model)
    paths = {}  # a layout that gives two images one file would make them overwrite each other, and skip one
    for index, job in enumerate(jobs):
        for k in range(n):
            for path in (layout.image_path(job, k), layout.sidecar_path(job, k)):
                if paths.setdefault(path, (index, k)) != (index, k):
                    first = jobs[paths[path][0]].where, paths[path][1]
                    raise ValueError(f"the layout gives {path} to two images: {first} and {(job.where, k)}")
    done, changed = scan_outputs(jobs, layout, n, model_name)
    if changed and not overwrite:
        raise CommandError(_refusal(layout, changed, model_name))

    def finished(job: Job, k: int) -> bool:
        return layout.image_path(job, k) in done

    mine = plan_batches(jobs, batch_size)[rank::world_size]
    todo = [batch for batch in mine if not all(finished(job, k) for job in batch for k in range(n))]
    missing = sum(not finished(job, k) for batch in todo for job in batch for k in range(n))
    total = sum(len(batch) for batch in mine) * n
    who = f"rank {rank}/{world_size}"
    print(
        f"{who}: {total} images in {len(mine)} batches; {total - missing} already written, {missing} to draw",
        file=sys.stderr,
    )
    pipes = {"model": model, "tokenizer": tokenizer}
    with tqdm(total=missing, desc=who, unit="image") as progress:
        for batch in todo:
            images = iter(draw_jobs(pipes, batch, n))
            for job in batch:
                for k in range(n):
                    image = next(images)
                    if finished(job, k):
                        continue
                    png, sidecar = layout.image_path(job, k), layout.sidecar_path(job, k)
                    png.parent.mkdir(parents=True, exist_ok=True)  # only once there is something to write
                    sidecar.parent.mkdir(parents=True, exist_ok=True)
                    # The old JSON goes first: killed in between, the image counts as unfinished, not as changed.
                    sidecar.unlink(missing_ok=True)
                    save(image, png, job.metadata(k, model_name))
                    write_sidecar(layout.record(job, k, model_name), sidecar)
                    progress.update()
    print(f"{who}: wrote {missing} images to {layout.outdir}", file=sys.stderr)
    return missing
