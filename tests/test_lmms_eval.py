"""lmms-eval's `harmon` model (issue 23): its request handling in-process (lmms-eval need not be installed), and a
real lmms-eval run of the Shapes-POPE task whose per-item answers must be `harmon ask`'s.

The real run needs the lmms-eval venv (`bash pipelines/evaluation/lmms/install.sh`) and its python in the environment
variable HARMON_LMMS_PYTHON (CI sets both); without it that test is skipped.
"""

import contextlib
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from harmon_pipelines.cli import main as harmon
from harmon_pipelines.evaluation.lmms_harmon import TASKS_DIR, HarmonLMMS
from training.shapes.write_pope import DATA_FILE, pope_rows, write_pope


TASK, SPLIT = "shapes_pope", "test"
SHIPPED_DATA = TASKS_DIR / TASK / DATA_FILE


class Request:
    """What lmms-eval's `Instance` gives a model: `args`, the request tuple."""

    def __init__(self, *args):
        self.args = args


def pope_doc_to_visual(doc):  # lmms-eval's POPE `doc_to_visual`
    return [doc["image"].convert("RGB")]


def ask(image, question: str, folder: Path) -> str:
    """`harmon ask IMAGE QUESTION` on the default model, run in-process: its printed answer."""
    path = folder / f"ask_{len(list(folder.glob('ask_*.png')))}.png"
    image.save(path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert harmon(["ask", str(path), question]) == 0
    return out.getvalue().strip()


@pytest.fixture(scope="module")
def rows():
    return pope_rows()


@pytest.fixture(scope="module")
def lmms(rows):
    """The lmms-eval model on the embedded demo model, with the Shapes-POPE documents where lmms-eval puts them."""
    model = HarmonLMMS(batch_size=3)
    model.task_dict = {TASK: {SPLIT: rows}}
    return model


def test_generate_until_answers_as_harmon_ask_in_request_order(lmms, rows, tmp_path):
    # Two generation settings interleaved and a batch size that splits each group: the answers must come back in the
    # order asked, each equal to `harmon ask`'s answer on its own.
    indices = list(range(8))
    greedy = {"max_new_tokens": 64, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False}
    asked = [
        Request(
            rows[i]["question"], dict(greedy if i % 2 else {"until": ["\n\n"]}), pope_doc_to_visual, i, TASK, SPLIT
        )
        for i in indices
    ]
    answers = lmms.generate_until(asked)
    expected = [ask(rows[i]["image"], rows[i]["question"], tmp_path) for i in indices]
    assert answers == expected
    assert set(answers) <= {"yes", "no"}


def test_generate_until_honours_until_and_max_new_tokens(lmms, rows, monkeypatch):
    seen = []
    generate = lmms.model.generate

    def spy(**kwargs):
        seen.append({key: value for key, value in kwargs.items() if not isinstance(value, torch.Tensor)})
        return generate(**kwargs)

    monkeypatch.setattr(lmms.model, "generate", spy)
    yes = next(i for i, row in enumerate(rows) if row["answer"] == "yes")
    plain = Request(rows[yes]["question"], {}, pope_doc_to_visual, yes, TASK, SPLIT)
    assert lmms.generate_until([plain]) == ["yes"]
    assert seen[-1] == {"max_new_tokens": 1024, "do_sample": False}  # greedy, the reference's length by default
    cut = Request(rows[yes]["question"], {"until": "es", "max_new_tokens": 7}, pope_doc_to_visual, yes, TASK, SPLIT)
    assert lmms.generate_until([cut]) == ["y"]
    assert seen[-1] == {"max_new_tokens": 7, "do_sample": False}
    sampled = {"temperature": 0.5, "top_p": 0.9, "max_new_tokens": 3}
    assert lmms._generation_settings(sampled) == (
        {"max_new_tokens": 3, "do_sample": True, "temperature": 0.5, "top_p": 0.9},
        [],
    )
    with pytest.raises(ValueError, match="until"):
        lmms._generation_settings({"until": [3]})


def test_prompt_is_harmon_asks(lmms):
    assert lmms.format_prompt("is there a red circle?", 1) == (
        "<|im_start|>user\n<image>\nis there a red circle?<|im_end|>\n<|im_start|>assistant\n"
    )
    # A context that places its own image keeps it there; stray placeholders are dropped.
    assert lmms.format_prompt("look: <image> what color?", 1) == (
        "<|im_start|>user\nlook: <image> what color?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert lmms.format_prompt("<image><image> what color?", 1).startswith("<|im_start|>user\n<image>\n what color?")


def test_loglikelihood_scores_the_answer_turn(lmms, rows):
    index = next(i for i, row in enumerate(rows) if row["answer"] == "yes")
    doc = rows[index]
    scores = lmms.loglikelihood(
        [Request(doc["question"], answer, pope_doc_to_visual, index, TASK, SPLIT) for answer in ("yes", "no")]
    )
    (yes, yes_greedy), (no, no_greedy) = scores
    assert yes_greedy and not no_greedy and 0 >= yes > no
    # The same number as the first step of greedy generation.
    inputs = lmms._inputs([lmms.format_prompt(doc["question"], 1)], [[doc["image"]]])
    output = lmms.model.generate(
        **inputs, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    first = torch.log_softmax(output.logits[0][0].float(), dim=-1)
    token = lmms.tokenizer("yes", add_special_tokens=False)["input_ids"]
    assert len(token) == 1 and yes == pytest.approx(float(first[token[0]]), abs=1e-4)


def test_trust_remote_code_is_passed_only_when_given(rows, monkeypatch):
    from transformers import AutoModel

    passed, load = [], AutoModel.from_pretrained

    def spy(*args, **kwargs):
        passed.append(kwargs.get("trust_remote_code"))
        return load(*args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", staticmethod(spy))
    asked = [Request(row["question"], {}, pope_doc_to_visual, i, TASK, SPLIT) for i, row in enumerate(rows[:4])]
    answers = []
    for model_args in ({}, {"trust_remote_code": "true"}):  # lmms-eval passes model_args as strings
        model = HarmonLMMS(**model_args)
        model.task_dict = {TASK: {SPLIT: rows}}
        answers.append(model.generate_until(asked))
    assert passed == [None, True]
    assert answers[0] == answers[1]


def test_model_args_are_checked():
    with pytest.raises(ValueError, match="unknown model_args"):
        HarmonLMMS(pretraned="x")
    with pytest.raises(ValueError, match="auto"):
        HarmonLMMS(batch_size="auto")
    with pytest.raises(ValueError, match="trust_remote_code"):
        HarmonLMMS(trust_remote_code="maybe")


def test_shipped_shapes_pope_data_is_what_the_script_writes(tmp_path, rows):
    datasets = pytest.importorskip("datasets")
    cache = str(tmp_path / "cache")
    shipped = datasets.Dataset.from_parquet(str(SHIPPED_DATA), cache_dir=cache)
    fresh = datasets.Dataset.from_parquet(str(write_pope(tmp_path / DATA_FILE)), cache_dir=cache)
    assert shipped.column_names == ["id", "question_id", "question", "answer", "image_source", "image", "category"]
    for column in shipped.column_names:
        if column == "image":
            assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(shipped[column], fresh[column]))
        else:
            assert shipped[column] == fresh[column] == [row[column] for row in rows]
    pairs = list(zip(shipped["category"], shipped["answer"]))
    assert {pair: pairs.count(pair) for pair in set(pairs)} == {
        (category, answer): 15 for category in ("random", "adversarial") for answer in ("yes", "no")
    }


@pytest.mark.skipif(
    not os.environ.get("HARMON_LMMS_PYTHON"),
    reason="HARMON_LMMS_PYTHON is not set: make the lmms-eval venv with pipelines/evaluation/lmms/install.sh and "
    "point HARMON_LMMS_PYTHON at its python",
)
def test_lmms_eval_cli_runs_shapes_pope_with_harmon_asks_answers(tmp_path, rows):
    python = os.environ["HARMON_LMMS_PYTHON"]
    output = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["HF_HOME"] = str(tmp_path / "hf")  # lmms-eval's datasets cache, fresh
    command = [
        python, "-m", "lmms_eval",
        "--model", "harmon",
        "--tasks", TASK,
        "--include_path", str(TASKS_DIR),
        "--batch_size", "8",
        "--log_samples",
        "--output_path", str(output),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = (run.stdout + run.stderr)[-4000:]
    assert run.returncode == 0, log
    # lmms-eval exits 0 after some failures too: the results and samples files are the proof it ran.
    results_files = sorted(output.glob("**/*_results.json"))
    samples_files = sorted(output.glob(f"**/*_samples_{TASK}.jsonl"))
    assert len(results_files) == 1 and len(samples_files) == 1, log
    results = json.loads(results_files[0].read_text())
    assert results["n-samples"][TASK] == {"original": len(rows), "effective": len(rows)}
    accuracy = results["results"][TASK]["pope_accuracy,none"]
    samples = sorted(
        (json.loads(line) for line in samples_files[0].read_text().splitlines()), key=lambda s: s["doc_id"]
    )
    assert [sample["doc_id"] for sample in samples] == list(range(len(rows)))

    asked = [ask(row["image"], row["question"], tmp_path) for row in rows]
    answered = [sample["filtered_resps"] for sample in samples]
    answered = [answer[0] if isinstance(answer, list) else answer for answer in answered]
    assert [sample["input"] for sample in samples] == [row["question"] for row in rows]  # the question alone
    assert answered == asked
    asked_accuracy = sum(answer.lower() == row["answer"] for answer, row in zip(asked, rows)) / len(rows)
    assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0
    assert accuracy == pytest.approx(asked_accuracy, abs=1e-12)
    print(f"Shapes-POPE accuracy through lmms-eval: {accuracy:.4f} ({len(rows)} items), equal to harmon ask's")
