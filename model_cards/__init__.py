"""Model cards for exported Harmon folders (installed as `harmon_model_cards`).

`render_model_card(folder, repo_id)` reads the folder's `config.json`, recognises the two released sizes by the
LLM width (Harmon-0.5B: Qwen2.5-0.5B-Instruct, hidden size 896; Harmon-1.5B: Qwen2.5-1.5B-Instruct, 1536), and
fills `harmon_model_card.md` (a Jinja template) with the Hub metadata and one usage example per entry point.
Only a released size gets a `base_model` and the paper's results; any other size (a tiny test model, a
from-scratch model) gets neither.
"""

import math
import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling_harmon.atomic_files import atomic_path
from modeling_harmon.configuration_harmon import HARMON_PRESETS, HarmonConfig


TEMPLATE_PATH = Path(__file__).resolve().parent / "harmon_model_card.md"

# One checkpoint does both directions (image+text -> text and text -> image); the Hub's task for that is
# `any-to-any`. The two directions are also tags, and model_cards/README.md explains the choice.
PIPELINE_TAG = "any-to-any"
TAGS = ["harmon", "mar", "unified-multimodal", "text-to-image", "image-text-to-text", "custom_code"]

# The licence of the released weights is set by the reference repository; point there instead of asserting one.
LICENSE_NAME = "s-lab-license-1.0"
LICENSE_LINK = "https://github.com/wusize/Harmon/blob/main/LICENSE"
REFERENCE_URL = "https://github.com/wusize/Harmon"
PAPER_URL = "https://arxiv.org/abs/2503.21979"

# Lower bounds of setup.py's INSTALL_REQUIRES (tests/test_model_cards.py checks that they agree).
MINIMUM_VERSIONS = {"transformers": "5.18", "diffusers": "0.40", "torch": "2.6"}

# Placeholder used in the examples when the card is rendered before the repo id is known.
REPO_PLACEHOLDER = "your-namespace/your-harmon-repo"


@dataclass(frozen=True)
class ReleasedSize:
    """A Harmon size released with the paper, and the numbers the paper reports for it (Tables 2-4)."""

    name: str
    base_model: str
    mar_size: str
    understanding: dict[str, float]
    fid: dict[str, float]
    geneval: dict[str, float]


def _llm_width(preset: str) -> int:
    return HARMON_PRESETS[preset]["text_config"]["hidden_size"]


# LLM hidden size -> released size. Numbers as printed in the paper: understanding scores (MME-P and MME-C are
# MME's perception and cognition sums, the others percentages), FID (lower is better), GenEval (fractions).
RELEASED_SIZES = {
    _llm_width("harmon-0.5b"): ReleasedSize(
        name="Harmon-0.5B",
        base_model="Qwen/Qwen2.5-0.5B-Instruct",
        mar_size="MAR-B",
        understanding={
            "POPE": 86.5,
            "MME-P": 1148,
            "MME-C": 260,
            "MMB": 59.8,
            "SEED": 62.5,
            "GQA": 56.3,
            "MMMU": 34.2,
        },
        fid={"MSCOCO-30K": 8.86, "MJHQ-30K": 6.08},
        geneval={
            "Overall": 0.71,
            "Single object": 0.99,
            "Two objects": 0.80,
            "Counting": 0.57,
            "Colors": 0.87,
            "Position": 0.55,
            "Color attribution": 0.48,
        },
    ),
    _llm_width("harmon-1.5b"): ReleasedSize(
        name="Harmon-1.5B",
        base_model="Qwen/Qwen2.5-1.5B-Instruct",
        mar_size="MAR-H",
        understanding={
            "POPE": 87.6,
            "MME-P": 1155,
            "MME-C": 321,
            "MMB": 65.5,
            "SEED": 67.1,
            "GQA": 58.9,
            "MMMU": 38.9,
        },
        fid={"MSCOCO-30K": 8.39, "MJHQ-30K": 5.15},
        geneval={
            "Overall": 0.76,
            "Single object": 0.99,
            "Two objects": 0.86,
            "Counting": 0.66,
            "Colors": 0.85,
            "Position": 0.74,
            "Color attribution": 0.48,
        },
    ),
}

# Understanding benchmark -> (dataset name, metric name); MME-P and MME-C are two metrics of one dataset.
UNDERSTANDING_BENCHMARKS = {
    "POPE": ("POPE", "POPE"),
    "MME-P": ("MME", "MME-P (perception)"),
    "MME-C": ("MME", "MME-C (cognition)"),
    "MMB": ("MMBench", "MMBench"),
    "SEED": ("SEED-Bench", "SEED"),
    "GQA": ("GQA", "GQA"),
    "MMMU": ("MMMU", "MMMU"),
}


def _slug(text: str) -> str:
    return text.lower().replace(" ", "-").replace("(", "").replace(")", "")


def released_size(config: HarmonConfig) -> ReleasedSize | None:
    """The released size whose LLM width `config` has, or `None` for any other size."""
    return RELEASED_SIZES.get(config.text_config.hidden_size)


def paper_eval_results(size: ReleasedSize) -> list[EvalResult]:
    """The paper's numbers for `size` as Hub `EvalResult`s, each naming the paper table as its source."""
    source = {"source_url": PAPER_URL}
    results = []
    for key, value in size.understanding.items():
        dataset, metric = UNDERSTANDING_BENCHMARKS[key]
        results.append(
            EvalResult(
                task_type="image-text-to-text",
                task_name="Multimodal understanding",
                dataset_type=_slug(dataset),
                dataset_name=dataset,
                metric_type=_slug(key),
                metric_name=metric,
                metric_value=value,
                source_name="Reported in the Harmon paper (Table 2)",
                **source,
            )
        )
    for dataset, value in size.fid.items():
        results.append(
            EvalResult(
                task_type="text-to-image",
                task_name="Text-to-image generation",
                dataset_type=_slug(dataset),
                dataset_name=dataset,
                metric_type="fid",
                metric_name="FID (lower is better)",
                metric_value=value,
                source_name="Reported in the Harmon paper (Table 3)",
                **source,
            )
        )
    for category, value in size.geneval.items():
        results.append(
            EvalResult(
                task_type="text-to-image",
                task_name="Text-to-image generation",
                dataset_type="geneval",
                dataset_name="GenEval",
                metric_type=_slug(category),
                metric_name=f"GenEval {category.lower()}",
                metric_value=value,
                source_name="Reported in the Harmon paper (Table 4)",
                **source,
            )
        )
    return results


def _parameter_count(folder: Path) -> int | None:
    """Total tensor elements of the folder's root `*.safetensors` files (shapes only; no tensor is read)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    total = 0
    for path in files:
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                total += math.prod(handle.get_slice(name).get_shape())
    return total if files else None


def _human(count: float, units: tuple[str, str, str, str] = ("", "K", "M", "B")) -> str:
    """`count` to three significant digits with a thousands prefix: 1234567 -> "1.23M"."""
    power = next((power for power in (3, 2, 1) if count >= 1000**power), 0)
    return f"{count / 1000**power:.3g}{units[power]}"


def render_model_card(folder: str | os.PathLike, repo_id: str | None = None, **overrides) -> ModelCard:
    """The model card of the exported Harmon `folder` (it must hold `config.json`).

    Args:
        folder: an exported folder (`harmon_pipelines.hub.save_hub_folder`); its `config.json` decides the size, and
            its `*.safetensors` headers give the parameter count.
        repo_id: the Hub repo id the examples load (`"org/name"`); `None` puts a placeholder in the examples.
        overrides: `ModelCardData` fields (or extra metadata keys) that replace the computed ones, e.g.
            `datasets=[...]`, `eval_results=None` (drops the paper results) or `base_model="..."`; `None` removes
            a field.
    """
    folder = Path(folder)
    config = HarmonConfig.from_pretrained(folder)
    size = released_size(config)
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": PIPELINE_TAG,
        "tags": list(TAGS),
        "license": "other",
        "license_name": LICENSE_NAME,
        "license_link": LICENSE_LINK,
        "base_model": size.base_model if size else None,
        "eval_results": paper_eval_results(size) if size else None,
    }
    metadata.update(overrides)
    # Not the folder's name: exports are written into a temporary folder and renamed.
    name = repo_id.split("/")[-1] if repo_id else size.name if size else "Harmon"
    if metadata.get("eval_results") and not metadata.get("model_name"):
        metadata["model_name"] = name  # the Hub's model-index needs one
    card_data = ModelCardData(**{key: value for key, value in metadata.items() if value is not None})

    parameters = _parameter_count(folder)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        repo_id=repo_id or REPO_PLACEHOLDER,
        repo_id_known=repo_id is not None,
        title=size.name if size else name,
        released=size,
        paper_results=card_data.eval_results or [],
        parameters=_human(parameters) if parameters else None,
        weights_size_bf16=_human(2 * parameters, (" bytes", " kB", " MB", " GB")) if parameters else None,
        image_stride=config.vae_stride * config.patch_size,
        llm_hidden_size=config.text_config.hidden_size,
        llm_layers=config.text_config.num_hidden_layers,
        image_size=config.image_size,
        minimum_versions=MINIMUM_VERSIONS,
        reference_url=REFERENCE_URL,
        paper_url=PAPER_URL,
    )


def write_model_card(folder: str | os.PathLike, repo_id: str | None = None, **overrides) -> Path:
    """Render the card of `folder` (see [`render_model_card`]) into `folder/README.md`, atomically: a reader sees
    the old card or the new one, never half of one. Returns the README path."""
    card = render_model_card(folder, repo_id=repo_id, **overrides)
    path = Path(folder) / "README.md"
    with atomic_path(path) as temporary:
        card.save(temporary)
    return path


__all__ = [
    "MINIMUM_VERSIONS",
    "PIPELINE_TAG",
    "RELEASED_SIZES",
    "REPO_PLACEHOLDER",
    "ReleasedSize",
    "paper_eval_results",
    "released_size",
    "render_model_card",
    "write_model_card",
]
