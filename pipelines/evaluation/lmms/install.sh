#!/usr/bin/env bash
# Make the lmms-eval venv (issue 23): lmms-eval 0.7.3 beside harmon-hf (editable, from this checkout), which registers
# `--model harmon` through its `lmms_eval.models` entry point. Its own venv, never the main one: lmms-eval's declared
# requirements pull torchvision (which breaks transformers' image utilities beside the CPU torch), timm, wandb, opencv,
# sentence-transformers and more. It is installed without them (--no-deps), with only the packages its CLI imports
# to run a task such as pope or shapes_pope: loguru, sacrebleu, evaluate, pytz, tenacity and pytablewriter. Every
# version comes from constraints.txt beside this script.
#
#   bash pipelines/evaluation/lmms/install.sh [VENV]       # default VENV: .venv-lmms at the repository root
#   HARMON_LMMS_PYTHON=.venv-lmms/bin/python .venv/bin/python -m pytest tests/test_lmms_eval.py
#
# On this project's 2-core CPU machines it took 90-140 s and makes 1.6 GB (torch: 0.75 GB).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
venv="${1:-$root/.venv-lmms}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

python3 -m venv "$venv"
pip=("$venv/bin/pip" install -q -c "$here/constraints.txt")
"${pip[@]}" "torch>=2.6,<2.14"
"${pip[@]}" -e "$root"
"${pip[@]}" loguru sacrebleu evaluate pytz tenacity pytablewriter filelock
"${pip[@]}" --no-deps lmms-eval==0.7.3  # last: pip would otherwise list its left-out requirements as conflicts
# lmms-eval reads its model registry at import: `harmon` must be there, and torchvision must not be installed.
"$venv/bin/python" - <<'PY'
import importlib.util

from lmms_eval.models import MODEL_REGISTRY_V2

assert importlib.util.find_spec("torchvision") is None, "torchvision is installed in the lmms-eval venv"
print("lmms-eval model harmon:", MODEL_REGISTRY_V2.resolve("harmon").class_path)
PY
