"""Harmon for transformers and diffusers: unified image understanding and generation."""

import re
from pathlib import Path

from setuptools import find_packages, setup


# The repository's folders `pipelines/`, `training/` and `model_cards/` are installed under names that cannot clash
# with other distributions' top-level packages.
RENAMED = {"harmon_pipelines": "pipelines", "harmon_training": "training", "harmon_model_cards": "model_cards"}


def _version() -> str:
    """`modeling_harmon.__version__`, read from the file: importing the package would import torch."""
    text = (Path(__file__).parent / "modeling_harmon" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE).group(1)


def _packages() -> list[str]:
    packages = find_packages(include=["modeling_harmon", "modeling_harmon.*"])
    for name, folder in RENAMED.items():
        packages += [name] + [f"{name}.{sub}" for sub in find_packages(where=folder)]
    return packages


# Ranges that install cleanly on a CPU machine: an unbounded torch pulls a multi-GB CUDA build, and
# transformers 5.24 rejects the newest peft.
INSTALL_REQUIRES = [
    "torch>=2.6,<2.14",
    "transformers>=5.18,<5.24",
    "diffusers>=0.40,<0.43",
    "accelerate>=1.0",
    "safetensors>=0.4",
    # A checkpoint's understanding adapter (config.understanding_adapter; the embedded demo model has one) is a PEFT
    # adapter, loaded through transformers' PEFT integration.
    "peft>=0.20,<0.22",
    "huggingface-hub>=1.0",
    "numpy>=1.24",
    "pillow>=10.0",
]
EXTRAS = {
    "train": ["datasets>=3.0", "trl>=1.0", "evaluate>=0.4", "pyyaml>=6.0"],
    "test": ["pytest>=8.0"],
    "lint": ["ruff==0.17.6"],  # pinned: the formatter's output changes between releases
    # FID and CLIPScore (harmon_pipelines.evaluation.image_metrics). torchmetrics adds lightning-utilities only; not
    # torch-fidelity (FID's Inception network): it requires torchvision, which would pull a CUDA torch. Install it
    # with `pip install --no-deps torch-fidelity==0.4.0` for the real FID.
    "eval": ["torchmetrics>=1.8,<2"],  # 1.8: FID's `antialias` argument
    # The web demo (`harmon demo`, harmon_pipelines/app.py) and its browser test. Gradio's major version is pinned:
    # its Python API changes between majors (6.0 moved `theme`/`css` to `launch()`); 6.31 is the version tested.
    # Gradio brings gradio_client and caps pillow below 13. Playwright drives the system Chromium (no download).
    "demo": ["gradio>=6.31,<7", "playwright>=1.50,<2"],
}
EXTRAS["dev"] = sorted({requirement for group in EXTRAS.values() for requirement in group})

setup(
    name="harmon-hf",
    version=_version(),
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE", "NOTICE"],
    python_requires=">=3.10",
    packages=_packages(),
    package_dir=dict(RENAMED),
    package_data={
        "harmon_model_cards": ["*.md"],
        "harmon_pipelines": [
            "default_model/*",
            "default_model/understanding_adapter/*",
            "evaluation/lmms/tasks/*/*.yaml",
            "evaluation/lmms/tasks/*/*.parquet",
        ],
        "harmon_training": ["configs/*.yaml", "configs/*.json", "configs/shapes/*.yaml", "shapes/metrics/*/*.py"],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["harmon=harmon_pipelines.cli:main"],
        # lmms-eval (0.7+) registers external models from this group: `lmms-eval --model harmon` (issue 23).
        "lmms_eval.models": ["harmon=harmon_pipelines.evaluation.lmms_harmon:lmms_eval_manifest"],
    },
)
