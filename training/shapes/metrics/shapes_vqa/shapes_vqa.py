"""ShapesEval VQA metric: exact-match accuracy of answers to Shapes-world questions, overall and by question type."""

import string

import datasets
import evaluate


_DESCRIPTION = """
Exact-match accuracy of a model's answers to questions about Shapes-world scenes (training/shapes/world.py
`questions`), overall and per question type (color, shape, position, count, exists). Answers and references are
compared after normalisation: `<|im_end|>` removed, lowercased, punctuation removed, whitespace collapsed. A type
with no questions scores None.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's answers.
    references (`list[str]`): the correct answers.
    question_type (`list[str]`): each question's type, one of color, shape, position, count, exists.
Returns:
    dict: accuracy (all questions), by_type {color, shape, position, count, exists}; fractions in [0, 1].
Example:
    >>> metric = load_metric("shapes_vqa")
    >>> metric.compute(predictions=["Red."], references=["red"], question_type=["color"])["accuracy"]
    1.0
"""

_CITATION = ""

# The question types of `world.questions`.
QUESTION_TYPES = ("color", "shape", "position", "count", "exists")
END_OF_TURN = "<|im_end|>"
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """`text` without `<|im_end|>` and punctuation, lowercased, with single spaces."""
    return " ".join(text.replace(END_OF_TURN, " ").lower().translate(_PUNCTUATION).split())


def _fraction(values: list) -> float | None:
    return sum(values) / len(values) if values else None


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ShapesVqa(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "question_type": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, question_type):
        unknown = sorted(set(question_type) - set(QUESTION_TYPES))
        if unknown:
            raise ValueError(f"question_type must hold only {list(QUESTION_TYPES)}, got {unknown}.")
        correct = [normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references)]
        return {
            "accuracy": _fraction(correct),
            "by_type": {
                kind: _fraction([right for right, asked in zip(correct, question_type) if asked == kind])
                for kind in QUESTION_TYPES
            },
        }
