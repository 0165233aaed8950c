"""`harmon eval report RESULTS... --card README.md --output NEW.md`: a copy of a model card with measured results
merged in (`harmon_pipelines.evaluation.report`); the input card is never edited in place.

    harmon eval report results/geneval.jsonl --card README.md --output NEW.md --source-url URL \
        --run-model org/harmon-0.5b --run-date 2025-06-01 --run-command "harmon eval geneval ..."
    harmon eval report results/fid-mjhq.json --dataset mjhq-30k --card NEW.md --output NEWER.md --run-model ...
"""

import os
import sys
from pathlib import Path


REPORT_HELP = "merge measured results files into a copy of a model card"
REPORT_DESCRIPTION = (
    "Merge results files into the model-index metadata and a 'Measured results' section of a copy of --card, "
    "written to --output. A results file is one of (recognised by its content): format harmon-eval-results/1; "
    "`harmon eval shapes|fid|clipscore --json` output (fid and clipscore need --dataset); GenEval's results.jsonl "
    "(scored as its summary_scores.py: overall = mean of the six task accuracies); DPG-Bench's results .txt "
    "(compute_dpg_bench.py --res-path: the score and its L1 categories). All but the first record no model, date "
    "or command: give --run-model, --run-date and --run-command. Entries from other sources (the paper's numbers) "
    "are kept as they are; a benchmark metric reported again replaces the earlier one. The kinds and the names "
    "they get are documented in harmon_pipelines.evaluation.report."
)


def add_report_arguments(parser) -> None:
    """The arguments of `harmon eval report` on `parser` (an argparse parser or subparser)."""
    parser.add_argument(
        "results",
        nargs="+",
        type=Path,
        metavar="RESULTS",
        help="results files to merge (.json, GenEval's .jsonl, DPG-Bench's .txt)",
    )
    parser.add_argument("--card", type=Path, required=True, metavar="README.md", help="the model card to start from")
    parser.add_argument(
        "--output", type=Path, required=True, metavar="NEW.md", help="where to write the new card (not --card)"
    )
    parser.add_argument(
        "--source-url",
        default=None,
        metavar="URL",
        help="the page that shows these results, e.g. https://huggingface.co/ORG/NAME (default: the one the card's "
        "measured results already name)",
    )
    parser.add_argument(
        "--model-name",
        default=None,
        metavar="NAME",
        help="the model-index name when the card has none yet (default: the results' model)",
    )
    for key, example in (("model", "ORG/NAME or a folder"), ("command", "the command line"), ("date", "YYYY-MM-DD")):
        parser.add_argument(
            f"--run-{key}",
            default=None,
            metavar=key.upper(),
            help=f"the run's {key} ({example}) for results files that do not record it (all but "
            "harmon-eval-results/1 files)",
        )
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="DATASET",
        help="the benchmark whose prompts the images of `harmon eval fid|clipscore --json` files were drawn for "
        "(required for those, refused otherwise): mscoco-30k, mjhq-30k (playgroundai/MJHQ-30K), geneval, dpg-bench, "
        "or a Hub dataset id ORG/NAME; one per call",
    )


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def demo_card_note(card: Path) -> str | None:
    """A hint when `card` is the packaged demo model's card, which is rendered from committed inputs: a merged copy
    cannot replace it (its render test compares it with the render), its scores are changed through those inputs."""
    from harmon_pipelines.default_model import DEFAULT_MODEL_DIR

    if not card.exists() or not _same_file(card, DEFAULT_MODEL_DIR / "README.md"):
        return None
    return (
        "note: the packaged demo model's card is rendered by training.shapes.demo_card from "
        "training/configs/shapes/card_inputs/ (eval.json is a `harmon eval shapes --json` file); to change its "
        "scores, replace that file and render the card again"
    )


def run_report(args) -> None:
    """Read the results and the card, merge, write `--output` atomically; mistakes raise `CommandError`."""
    from harmon_pipelines.cli import CommandError
    from modeling_harmon.atomic_files import atomic_path

    from .report import (
        CardError,
        ResultsFileError,
        dataset_identifier,
        merge_results_into_card,
        read_results,
        shared_identifiers,
    )

    card, output = Path(args.card), Path(args.output)
    for path, shown in [(card, "--card"), *((path, "RESULTS") for path in args.results)]:
        if not path.exists():
            raise CommandError(f"{shown} {str(path)!r}: no such file")
        if not path.is_file():
            raise CommandError(f"{shown} {str(path)!r} is a folder; give a file")
    if output.exists() and not output.is_file():
        raise CommandError(f"--output {str(output)!r} is not a file; give a new file name")
    if _same_file(card, output):
        raise CommandError(
            f"--output {str(output)!r} is --card {str(card)!r}: the card is not edited in place; write to another "
            "file and compare"
        )
    if args.dataset is not None:
        try:
            dataset_identifier(args.dataset)
        except ValueError as error:
            raise CommandError(f"--dataset: {error}") from None
    provenance = {"model": args.run_model, "command": args.run_command, "date": args.run_date}
    try:
        results = read_results(args.results, provenance, dataset=args.dataset)
        text = merge_results_into_card(
            card.read_text(encoding="utf-8"), results, source_url=args.source_url, model_name=args.model_name
        )
    except ResultsFileError as error:
        raise CommandError(str(error)) from None
    except CardError as error:
        raise CommandError(f"--card {str(card)!r}: {error}") from None
    except UnicodeDecodeError:
        raise CommandError(f"--card {str(card)!r}: not UTF-8 text") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as temporary:
        temporary.write_text(text, encoding="utf-8", newline="")
    print(f"wrote {output} ({len(results)} measured result(s) merged)", file=sys.stderr)
    for note in (demo_card_note(card), _shared_note(shared_identifiers(text))):
        if note:
            print(note, file=sys.stderr)


def _shared_note(benchmarks: list[str]) -> str | None:
    if not benchmarks:
        return None
    return (
        f"note: the measured {', '.join(benchmarks)} share task and dataset identifiers with entries of another source "
        "(kept apart here); huggingface_hub's ModelCardData would merge them under one source if it re-saved the "
        "card, so give such results a dataset split, config or revision where one applies"
    )
