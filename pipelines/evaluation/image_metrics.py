"""FID between two image folders and CLIPScore of images against their prompts, computed by torchmetrics, offline.

    from harmon_pipelines.evaluation.image_metrics import clip_score_folder, fid_folders

    fid_folders("generated/", "reference/", weights="weights-inception-2015-12-05-6726825d.pth")
    clip_score_folder("generated/", clip="clip-vit-large-patch14/")      # prompts from the images' JSON sidecars

Both stream the images in batches (memory does not grow with the number of images), read every image as 8-bit RGB,
and return a JSON-ready dict: `metric`, `value`, `n`, `settings`, `library` (the versions that computed it).
Mistakes in the inputs raise [`ImageMetricError`], whose message names the `harmon eval fid|clipscore` flag of the
input (`--generated`, `--reference`, `--weights`, `--images`, `--clip`, ...; the keyword arguments of the same names).

Why torchmetrics, and how it runs without torchvision (which does not import beside a CPU-only torch from the
PyTorch index): `torchmetrics` itself needs only `lightning-utilities`; its `FrechetInceptionDistance` accepts any
`nn.Module` as the feature extractor, and its `CLIPScore` any (model, processor) pair. The real FID network is
torch-fidelity's TF-compatible Inception-v3 (`torch_fidelity.feature_extractor_inceptionv3`, what torchmetrics builds
for `feature=2048`). That module needs nothing beyond torch and loads its weights from a local file, but the
torch-fidelity package (a) declares torchvision as a dependency, and (b) imports torchvision in its `__init__` (for
its CLIP, VGG and DINOv2 extractors), so that once it is installed, `import torchmetrics` fails wherever torchvision
does not import. Hence: torch-fidelity is an optional, `--no-deps` install (`TORCH_FIDELITY_INSTALL`), and this module
imports its Inception module without running the package `__init__` ([`_register_torch_fidelity_package`]).
"""

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import math
import re
import sys
import tempfile
import types
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# The FID Inception-v3 weights: TensorFlow's 2015-12-05 graph (the one every published FID uses) converted to PyTorch
# by torch-fidelity, which downloads this file from its GitHub release when given no path.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
INCEPTION_FEATURES = 2048
# A few of the network's parameter names: a file without them is not these weights (checked before the full load).
INCEPTION_KEYS = ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight", "fc.weight")
# --no-deps: torch-fidelity's declared torchvision dependency would bring a CUDA torch (see the module docstring).
TORCH_FIDELITY_INSTALL = "pip install --no-deps 'torch-fidelity==0.4.0'"
EVAL_EXTRA_INSTALL = "pip install 'harmon-hf[eval]'"

# torchmetrics' default CLIP for CLIPScore (its `model_name_or_path` default).
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
CLIP_DOWNLOAD = f"hf download {DEFAULT_CLIP} --local-dir clip-vit-large-patch14"
GENEVAL_METADATA = "metadata.jsonl"
GENEVAL_SAMPLE = r"\d+\.png"  # GenEval's scorer takes the samples whose names match this (re.match)


class ImageMetricError(ValueError):
    """A mistake in a metric's inputs; the message names the command-line flag of the input."""


def _shown(flag: str, path) -> str:
    return f"{flag} {str(path)!r}"


# --------------------------------------------------------------------------------------------------- libraries
def _register_torch_fidelity_package() -> None:
    """Make `torch_fidelity.<module>` importable without running torch-fidelity's `__init__`, which imports
    torchvision; its Inception-v3 module and that module's imports (helpers, defaults, base class, TF-compatible
    resize) need torch only. A no-op where torch-fidelity is missing or already imported. The registered package is
    bare: `torch_fidelity.calculate_metrics` and the other names of its `__init__` are missing in this process."""
    if "torch_fidelity" in sys.modules:
        return
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        return
    package = types.ModuleType("torch_fidelity", "torch-fidelity, its submodules only (see image_metrics)")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__package__ = "torch_fidelity"
    sys.modules["torch_fidelity"] = package


def _import_torchmetrics():
    """torchmetrics, imported after [`_register_torch_fidelity_package`]: `import torchmetrics` imports its FID
    module, which imports torch-fidelity wherever that is installed."""
    if "torchmetrics" not in sys.modules:
        _register_torch_fidelity_package()
    try:
        import torchmetrics
    except ImportError as error:
        raise ImageMetricError(
            f"FID and CLIPScore are computed by torchmetrics, which does not import here ({error}); install it with "
            f"{EVAL_EXTRA_INSTALL}. A torchvision that is installed but does not import beside this torch breaks "
            "torchmetrics too: uninstall it"
        ) from None
    return torchmetrics


def _versions(*names: str) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, ValueError):
        raise ImageMetricError(f"--device {device!r} is not a torch device; use e.g. cpu, cuda or cuda:1") from None


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ImageMetricError(f"--batch-size must be an integer >= 1, got {batch_size!r}")


# ------------------------------------------------------------------------------------------------------ images
def list_images(folder: str | Path, flag: str) -> list[Path]:
    """The image files (by suffix: `IMAGE_SUFFIXES`) directly in `folder`, sorted by name. Hidden files are skipped:
    the temporary files of an atomic write (`modeling_harmon.atomic_files`) are hidden and keep the image suffix."""
    folder = Path(folder)
    if not folder.exists():
        raise ImageMetricError(f"{_shown(flag, folder)}: no such folder")
    if not folder.is_dir():
        raise ImageMetricError(f"{_shown(flag, folder)} is a file; give a folder of images")
    return sorted(
        path
        for path in folder.iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
    )


def _open_checked(path: Path, flag: str):
    """`Image.open(path)`; an unreadable file, or one beyond PIL's decompression-bomb limit (its warning treated as
    the error), is an [`ImageMetricError`] naming `flag` and the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageMetricError(f"{flag}: {str(path)!r} is not an image PIL can read ({error})") from None


def image_size(path: Path, flag: str) -> tuple[int, int]:
    """(height, width) of the image at `path`, from its header (the pixels are not decoded)."""
    with _open_checked(path, flag) as image:
        return image.height, image.width


def read_rgb(path: Path, flag: str, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The image at `path` as a (3, H, W) uint8 tensor, RGB; resized to `size` (height, width) with PIL's bicubic
    filter (antialiased) when given. 16-bit and float images are scaled to 8 bits as Harmon's processor does."""
    from modeling_harmon.image_processing_harmon import to_rgb_image

    with _open_checked(path, flag) as image:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                rgb = to_rgb_image(image)
        except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageMetricError(f"{flag}: {str(path)!r} is not an image PIL can read ({error})") from None
    if size is not None and (rgb.height, rgb.width) != tuple(size):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _batches(items: Sequence, batch_size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def _check_resize(resize) -> tuple[int, int] | None:
    if resize is None:
        return None
    sides = (resize, resize) if isinstance(resize, int) else tuple(resize)
    if len(sides) != 2 or not all(
        isinstance(side, int) and not isinstance(side, bool) and side >= 1 for side in sides
    ):
        raise ImageMetricError(f"--resize must be a size HxW or N in pixels >= 1, got {resize!r}")
    return sides


# --------------------------------------------------------------------------------------------------------- FID
def _inception_weights(weights) -> tuple[Path, bytes, str]:
    """The checked `--weights` file, its bytes and their SHA-256. The bytes are read once and checked with
    `weights_only=True`, because torch-fidelity reads weights with `weights_only=False` (arbitrary pickles): it is
    then given a private copy of exactly these bytes (see `fid_folders`), so a file that is not a plain state dict
    of the FID Inception, or one swapped after the check, never reaches that load."""
    where = (
        f"the FID Inception-v3 weights {INCEPTION_WEIGHTS_FILE} are downloaded (on a machine with internet) from "
        f"{INCEPTION_WEIGHTS_URL}"
    )
    if weights is None:
        raise ImageMetricError(f"--weights FILE is needed and works offline: {where}")
    path = Path(weights)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ImageMetricError(f"{_shown('--weights', path)} {what}; {where}")
    data = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file (pickle, zip, runtime errors)
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise ImageMetricError(
            f"{_shown('--weights', path)} is not a PyTorch weights file ({reason}); {where}"
        ) from None
    missing = [key for key in INCEPTION_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ImageMetricError(
            f"{_shown('--weights', path)} does not hold the FID Inception-v3 weights (no {missing[0]!r}); {where}"
        )
    del state
    return path, data, hashlib.sha256(data).hexdigest()


def _fid_metric(weights: Path, antialias: bool):
    """torchmetrics' FID with torch-fidelity's Inception-v3 loaded from `weights`."""
    torchmetrics = _import_torchmetrics()  # first: it must see torch-fidelity's package registered without __init__
    if "torch_fidelity" not in sys.modules and importlib.util.find_spec("torch_fidelity") is None:
        raise ImageMetricError(
            "--weights: the FID Inception-v3 network is torch-fidelity's, which is not installed; install it without "
            f"its torchvision dependency: {TORCH_FIDELITY_INSTALL}"
        )
    from torchmetrics.image.fid import FrechetInceptionDistance

    try:
        return FrechetInceptionDistance(
            feature=INCEPTION_FEATURES, feature_extractor_weights_path=str(weights), antialias=antialias
        )
    except ModuleNotFoundError as error:  # torchmetrics was imported before torch-fidelity was installed
        raise ImageMetricError(f"--weights: {error} (torchmetrics {torchmetrics.__version__})") from None
    except RuntimeError as error:  # load_state_dict: missing or unexpected keys, shapes
        reason = " ".join(str(error).split())[:300]
        raise ImageMetricError(f"{_shown('--weights', weights)} does not fit the FID Inception-v3: {reason}") from None


def fid_folders(
    generated: str | Path,
    reference: str | Path,
    *,
    weights: str | Path | None = None,
    feature_extractor: torch.nn.Module | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    resize: int | tuple[int, int] | None = None,
    allow_count_mismatch: bool = False,
    antialias: bool = False,
    progress: bool = False,
) -> dict:
    """FID between the images of the folders `generated` and `reference`, by torchmetrics' `FrechetInceptionDistance`.

    The features are those of the FID Inception-v3 (2048-d pool features) with `weights` (torch-fidelity's file, see
    `INCEPTION_WEIGHTS_URL`; torch-fidelity installed with `TORCH_FIDELITY_INSTALL`), or of `feature_extractor`,
    an `nn.Module` from (B, 3, H, W) uint8 RGB to (B, D) features (its `num_features` attribute, if any, gives D).
    The Inception resizes every image to 299x299 itself: by default as TensorFlow 1.x's bilinear resize (no
    antialiasing, as the original FID code and torch-fidelity, so the value compares with published ones);
    `antialias=True` uses torchmetrics' default (antialiased bilinear) instead.

    Refused, before any image is decoded: a folder with fewer than 2 images; folders with different numbers of
    images unless `allow_count_mismatch` (FID's bias depends on the number of images, and a short folder is most
    often an unfinished generation run); any image of another resolution than the first generated one, unless
    `resize` (N or (height, width)) makes every image that size first (PIL bicubic).
    """
    generated_images = list_images(generated, "--generated")
    reference_images = list_images(reference, "--reference")
    for flag, folder, images in (
        ("--generated", generated, generated_images),
        ("--reference", reference, reference_images),
    ):
        if len(images) < 2:
            raise ImageMetricError(
                f"{_shown(flag, folder)} holds {len(images)} image(s) ({', '.join(IMAGE_SUFFIXES)}); FID needs at "
                "least 2 a folder (and thousands for a stable value)"
            )
    if len(generated_images) != len(reference_images) and not allow_count_mismatch:
        raise ImageMetricError(
            f"{_shown('--reference', reference)} holds {len(reference_images)} images but "
            f"{_shown('--generated', generated)} holds {len(generated_images)}; FID depends on the number of images, "
            "so compare equal numbers (pass --allow-count-mismatch to score them anyway)"
        )
    _check_batch_size(batch_size)
    size = _check_resize(resize)
    if size is None:
        # One resolution for all: images of a batch are stacked, and sets at different resolutions differ in more
        # than what FID is meant to measure.
        expected = image_size(generated_images[0], "--generated")
        for flag, folder, images in (
            ("--generated", generated, generated_images),
            ("--reference", reference, reference_images),
        ):
            for path in images:
                found = image_size(path, flag)
                if found != expected:
                    raise ImageMetricError(
                        f"{_shown(flag, folder)}: {path.name!r} is {found[0]}x{found[1]} (HxW) but the first "
                        f"--generated image {generated_images[0].name!r} is {expected[0]}x{expected[1]}; FID compares "
                        "images at one resolution: pass --resize HxW to resize every image first"
                    )
    image_shape = size or expected
    run_device = _device(device)

    if feature_extractor is not None and weights is not None:
        raise ImageMetricError("give either --weights (the FID Inception-v3) or a feature_extractor, not both")
    if feature_extractor is None:
        weights_path, data, sha256 = _inception_weights(weights)
        with tempfile.TemporaryDirectory() as private:  # 0700: only this user can reach the checked copy
            checked = Path(private) / weights_path.name
            checked.write_bytes(data)
            metric = _fid_metric(checked, antialias)
        extractor = {
            "name": "inception-v3-compat (torch-fidelity, TensorFlow FID weights)",
            "features": INCEPTION_FEATURES,
            "weights": str(weights_path),
            "weights_sha256": sha256,
            "inception_resize": "antialiased bilinear (torchmetrics)" if antialias else "TensorFlow 1.x bilinear",
        }
    else:
        _import_torchmetrics()
        from torchmetrics.image.fid import FrechetInceptionDistance

        feature_extractor.eval()
        metric = FrechetInceptionDistance(feature=feature_extractor, input_img_size=(3, *image_shape))
        extractor = {"name": type(feature_extractor).__name__, "features": int(metric.real_features_sum.numel())}
    metric = metric.to(run_device)

    with tqdm(
        total=len(generated_images) + len(reference_images), desc="FID", unit="image", disable=not progress
    ) as bar:
        for flag, images, real in (("--reference", reference_images, True), ("--generated", generated_images, False)):
            for batch in _batches(images, batch_size):
                pixels = torch.stack([read_rgb(path, flag, size) for path in batch]).to(run_device)
                metric.update(pixels, real=real)
                bar.update(len(batch))
        value = float(metric.compute())
    return {
        "metric": "fid",
        "value": value,
        "n": len(generated_images),
        "n_reference": len(reference_images),
        "generated": str(generated),
        "reference": str(reference),
        "settings": {
            "feature_extractor": extractor,
            "image_size": list(image_shape),
            "resize": list(size) if size else None,
            "batch_size": batch_size,
            "device": str(run_device),
        },
        "library": _versions("torchmetrics", "torch-fidelity", "torch"),
    }


# --------------------------------------------------------------------------------------------------- CLIPScore
def _prompt_from(path: Path, flag: str, where: str) -> str:
    """The non-empty "prompt" string of the JSON object in `path`: a sidecar, or a GenEval `metadata.jsonl` (one
    object, read whole as GenEval's scorer reads it)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImageMetricError(f"{flag}: {where} has no {path.name!r} to read its prompt from") from None
    except (OSError, ValueError) as error:
        raise ImageMetricError(f"{flag}: {str(path)!r} is not readable JSON ({error})") from None
    prompt = record.get("prompt") if isinstance(record, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise ImageMetricError(f'{flag}: {str(path)!r} has no "prompt" string (a JSON object {{"prompt": "..."}})')
    return prompt


def image_prompts(folder: str | Path, flag: str = "--images") -> tuple[list[tuple[Path, str]], str]:
    """(image, prompt) pairs of `folder`, and the layout they were found in:

    - "sidecars": images directly in `folder`, each with `STEM.json` holding {"prompt": ...}, as
      `harmon generate --prompts FILE.jsonl --outdir DIR` writes them;
    - "geneval": GenEval's layout, `folder/<NNNNN>/metadata.jsonl` ({"prompt": ...}) with the images of that
      prompt in `folder/<NNNNN>/samples/`, used when `folder` has no images of its own. As GenEval's scorer, only
      folders named by digits and samples named `<digits>.png` count (sidecars and other files beside them don't).
    """
    folder = Path(folder)
    images = list_images(folder, flag)
    if images:
        return [(path, _prompt_from(path.with_suffix(".json"), flag, repr(path.name))) for path in images], "sidecars"
    pairs = []
    for sub in sorted(path for path in folder.iterdir() if path.name.isdigit() and path.is_dir()):
        samples = sub / "samples"
        found = (
            [path for path in list_images(samples, flag) if re.match(GENEVAL_SAMPLE, path.name)]
            if samples.is_dir()
            else []
        )
        if found:
            prompt = _prompt_from(sub / GENEVAL_METADATA, flag, repr(sub.name))
            pairs += [(path, prompt) for path in found]
    if not pairs:
        raise ImageMetricError(
            f"{_shown(flag, folder)} holds no images ({', '.join(IMAGE_SUFFIXES)}) with prompts: expected images with "
            f"STEM.json sidecars, or GenEval's NNNNN/{GENEVAL_METADATA} with NNNNN/samples/ images"
        )
    return pairs, "geneval"


class _ProjectedFeatures(torch.nn.Module):
    """A CLIP model whose `get_image_features` / `get_text_features` return the projected embeddings as tensors.

    transformers 5 returns a `BaseModelOutputWithPooling` (the embeddings in `pooler_output`) where torchmetrics
    1.9.0, the newest release, expects a tensor (torchmetrics issue #3407, fixed after 1.9.0 by PR #3408)."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    @property
    def config(self):
        return self.clip.config

    @staticmethod
    def _tensor(output) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, pixel_values):
        return self._tensor(self.clip.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids, attention_mask=None):
        return self._tensor(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


class _TruncatingProcessor:
    """A CLIP processor that cuts prompts to the text model's `max_tokens`, keeping the end-of-text token.

    torchmetrics tokenizes without truncation and then cuts long token sequences itself, which drops the end-of-text
    token that CLIP's text model pools at; long prompts (DPG-Bench's, many GenEval rewrites) would then all score
    alike. Counts the prompts it cut in `truncated`."""

    def __init__(self, processor, max_tokens: int):
        self.processor = processor
        self.max_tokens = max_tokens
        self.truncated = 0

    def __call__(self, text=None, images=None, **kwargs):
        if text is not None:
            lengths = [len(ids) for ids in self.processor.tokenizer(list(text))["input_ids"]]
            self.truncated += sum(length > self.max_tokens for length in lengths)
            kwargs.update(truncation=True, max_length=self.max_tokens)
        return self.processor(text=text, images=images, **kwargs)


def load_clip(clip: str | Path):
    """(model, processor) of the local CLIP folder `clip` (transformers layout), loaded without network access.

    The image processor is always the PIL one (`CLIPImageProcessorPil`): transformers' default for CLIP needs
    torchvision, and scores should not depend on which backend a machine happens to have."""
    where = f"download {DEFAULT_CLIP} (torchmetrics' default CLIP) on a machine with internet: {CLIP_DOWNLOAD}"
    if clip is None:
        raise ImageMetricError(f"--clip FOLDER is needed (a local CLIP in transformers' layout); {where}")
    path = Path(clip)
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise ImageMetricError(f"{_shown('--clip', path)} {what}; {where}")
    import transformers
    from transformers import AutoTokenizer, CLIPModel, CLIPProcessor

    # Older transformers have only the PIL processor, under the plain name (read lazily: naming the plain class
    # where torchvision is missing logs a warning).
    image_processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        image_processor = image_processor_class.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise ImageMetricError(
            f"{_shown('--clip', path)} is not a CLIP folder transformers can load ({reason}); {where}"
        ) from None
    return model.eval(), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def clip_score_folder(
    images: str | Path,
    clip: str | Path | None = None,
    *,
    clip_model: tuple | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict:
    """CLIPScore of the images of the folder `images` against their prompts ([`image_prompts`]), by torchmetrics'
    `CLIPScore`: the mean over images of 100 x the cosine of CLIP's image and prompt embeddings, floored at 0 (the
    floor applies to the mean, as torchmetrics defines it; the original paper's 2.5 x max(cos, 0) is per image).

    `clip`: a local CLIP folder ([`load_clip`]); or `clip_model`, a (CLIPModel, CLIPProcessor) pair already loaded.
    Images may have any sizes: the processor resizes each. Prompts longer than the text model's context are cut to
    it (`settings.prompts_truncated` counts them).
    """
    pairs, layout = image_prompts(images, "--images")
    _check_batch_size(batch_size)
    run_device = _device(device)
    if clip_model is None:
        model, processor = load_clip(clip)
    elif clip is not None:
        raise ImageMetricError("give either --clip (a CLIP folder) or clip_model, not both")
    else:
        model, processor = clip_model
    max_tokens = int(model.config.text_config.max_position_embeddings)
    cutting = _TruncatingProcessor(processor, max_tokens)
    wrapped = _ProjectedFeatures(model)
    _import_torchmetrics()
    from torchmetrics.multimodal.clip_score import CLIPScore

    metric = CLIPScore(model_name_or_path=lambda: (wrapped, cutting)).to(run_device)
    with tqdm(total=len(pairs), desc="CLIPScore", unit="image", disable=not progress) as bar:
        for batch in _batches(pairs, batch_size):
            pixels = [read_rgb(path, "--images").to(run_device) for path, _ in batch]
            metric.update(pixels, [prompt for _, prompt in batch])
            bar.update(len(batch))
        value = float(metric.compute())
    if not math.isfinite(value):
        raise ImageMetricError(f"CLIPScore came out {value} (the CLIP weights in --clip hold NaN or inf?)")
    return {
        "metric": "clipscore",
        "value": value,
        "n": len(pairs),
        "images": str(images),
        "settings": {
            "clip": str(clip) if clip is not None else getattr(model, "name_or_path", None) or type(model).__name__,
            "image_processor": type(processor.image_processor).__name__,
            "max_prompt_tokens": max_tokens,
            "prompts_truncated": cutting.truncated,
            "prompt_source": layout,
            "batch_size": batch_size,
            "device": str(run_device),
        },
        "library": _versions("torchmetrics", "transformers", "torch"),
    }
