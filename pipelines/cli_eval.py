"""`harmon eval BENCHMARK`: scoring a model on a benchmark, one subcommand a benchmark.

harmon eval shapes --n 180 --json shapes.json          # ShapesEval: GenEval-like + VQA
harmon eval shapes --task inpaint --n 240              # image-conditioned tasks
harmon eval shapes --task phrasing --json phrasing.json  # canonical, seen and held-out wordings
"""

import argparse
import json
import sys
from pathlib import Path

from modeling_harmon.atomic_files import atomic_path, write_json
from modeling_harmon.modeling_harmon_settings import EDIT_MODES, HarmonImageGenerationSettings, HarmonSettingError

from .cli import (
    PIPELINE_NAMES,
    CommandError,
    _load,
    _positive_int_argument,
    _seed_argument,
    check_device,
    load_processor,
)


# `harmon eval shapes`'s setting flags.
EVAL_FIELDS = ("num_iter", "guidance_scale", "temperature", "num_sampling_steps", "x0_clamp", "candidates")


def add_eval_command(commands, add_setting_arguments, add_model_arguments) -> None:
    """`harmon eval BENCHMARK ...` on `commands` (the `harmon` parser's subparsers): one subcommand a benchmark, each
    with its own arguments."""
    evaluation = commands.add_parser(
        "eval",
        help="draw a benchmark's prompts (geneval, dpg, captions), score (shapes, fid, clipscore) or report into a card",
        description="Score a model on a benchmark. shapes: ShapesEval of the Shapes world, judged by a model-free "
        "checker.",
    )
    benchmarks = evaluation.add_subparsers(
        dest="benchmark", required=True, metavar="{shapes,geneval,dpg,captions,fid,clipscore,report}"
    )
    shapes = benchmarks.add_parser(
        "shapes",
        help="ShapesEval: text-to-image, VQA and image-conditioned tasks of the Shapes world",
        description="ShapesEval: draw a fixed, seeded set of Shapes-world prompts (single objects, two objects, "
        "counting, held-out colour-shape pairs), judge each image with a model-free checker, and ask as many "
        "questions about ground-truth renders. Prints a table; --json writes the scores (fractions).",
    )
    shapes.add_argument(
        "--task",
        choices=("generate", "inpaint", "outpaint", "vary", "edit", "phrasing"),
        default="generate",
        help="generate: text-to-image and VQA (default); inpaint: redraw one object of a two-object scene "
        "(harmon_training.shapes.evaluation_inpaint); outpaint: draw the half of a two-object scene that is missing "
        "(harmon_training.shapes.evaluation_outpaint); vary: variations at strengths 0.3 and 0.6 "
        "(harmon_training.shapes.evaluation_vary); edit: follow an edit instruction with the source in view, by "
        "operation, held-out combinations and phrasings apart (harmon_training.shapes.evaluation_edit); phrasing: "
        "text-to-image and VQA with the canonical, a seen and a held-out wording of the same scenes and questions, "
        "by phrasing name in --json (evaluate_phrasing in harmon_training.shapes.evaluation_edit)",
    )
    shapes.add_argument(
        "--n",
        type=_positive_int_argument,
        default=180,
        metavar="N",
        help="generation prompts, and VQA questions (default 180)",
    )
    shapes.add_argument(
        "--seed",
        type=_seed_argument,
        default=0,
        help="picks the prompts and questions; image i is drawn with seed + i (default 0)",
    )
    add_setting_arguments(shapes, EVAL_FIELDS)
    shapes.add_argument(
        "--edit-mode",
        choices=EDIT_MODES,
        help="--task edit: direct (draw with the source in view) or describe (the model writes the edited scene, "
        "then draws it; its texts are scored too) (default: the model's)",
    )
    shapes.add_argument(
        "--batch-size",
        type=_positive_int_argument,
        default=16,
        metavar="B",
        help="prompts (questions) per model call (default 16)",
    )
    shapes.add_argument("--json", type=Path, metavar="OUT.json", help="also write the scores as JSON")
    shapes.add_argument("--skip-generation", action="store_true", help="only VQA")
    shapes.add_argument("--skip-vqa", action="store_true", help="only generation")
    shapes.add_argument(
        "--write-geneval-metadata",
        type=Path,
        metavar="FILE.jsonl",
        help="write ShapesEval's --n prompts of --seed as a GenEval metadata file (for `harmon eval geneval`) and stop",
    )
    shapes.add_argument(
        "--score-geneval",
        type=Path,
        metavar="DIR",
        help="score the images `harmon eval geneval` drew from such a file with the Shapes checker, instead of drawing",
    )
    add_model_arguments(shapes)
    shapes.set_defaults(run=run_shapes_eval)

    from .evaluation import cli_captions, cli_dpg, cli_geneval
    from .evaluation.cli_image_metrics import (
        CLIPSCORE_DESCRIPTION,
        CLIPSCORE_HELP,
        FID_DESCRIPTION,
        FID_HELP,
        add_clipscore_arguments,
        add_fid_arguments,
    )
    from .evaluation.cli_report import REPORT_DESCRIPTION, REPORT_HELP, add_report_arguments, run_report

    for name, module, add_arguments, summary in (
        (
            "geneval",
            cli_geneval,
            cli_geneval.add_geneval_arguments,
            "draw GenEval's prompts into the layout its scorer reads (resumable, sharded under torchrun)",
        ),
        (
            "dpg",
            cli_dpg,
            cli_dpg.add_dpg_arguments,
            "draw DPG-Bench's prompts as the 2x2 grids its scorer reads (resumable, sharded under torchrun)",
        ),
        (
            "captions",
            cli_captions,
            cli_captions.add_captions_arguments,
            "draw one image per caption (MSCOCO-30K, MJHQ-30K) for fid and clipscore (resumable, sharded)",
        ),
    ):
        drawing = benchmarks.add_parser(
            name, help=summary, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        add_arguments(drawing, add_setting_arguments, add_model_arguments)
    add_fid_arguments(benchmarks.add_parser("fid", help=FID_HELP, description=FID_DESCRIPTION))
    add_clipscore_arguments(benchmarks.add_parser("clipscore", help=CLIPSCORE_HELP, description=CLIPSCORE_DESCRIPTION))
    report = benchmarks.add_parser("report", help=REPORT_HELP, description=REPORT_DESCRIPTION)
    add_report_arguments(report)
    report.set_defaults(run=run_report)


def run_shapes_eval(args) -> None:
    # Imported here: it loads `evaluate`, which takes seconds that the other subcommands need not spend.
    from harmon_training.shapes.evaluation import evaluate_shapes, format_table, generation_settings

    check_device(args.device)
    if args.skip_generation and args.skip_vqa:
        raise CommandError("--skip-generation with --skip-vqa leaves nothing to evaluate")
    if args.task == "phrasing" and (args.skip_generation or args.skip_vqa):
        # It has no half to skip: running the skipped half anyway would spend its time unasked.
        raise CommandError("--task phrasing scores generation and VQA together; drop --skip-generation/--skip-vqa")
    if args.json is not None and args.json.is_dir():
        raise CommandError(f"--json {str(args.json)!r} is a folder; give a file name")
    if args.edit_mode is not None and args.task != "edit":
        raise CommandError(f"--edit-mode applies to --task edit, not --task {args.task}")
    if args.write_geneval_metadata is not None or args.score_geneval is not None:
        return _run_shapes_geneval(args)
    model, tokenizer = _load(args)
    flags = HarmonImageGenerationSettings.flags()
    given = {field: getattr(args, flags[field][2:].replace("-", "_")) for field in EVAL_FIELDS}
    try:
        settings = generation_settings(model, sampling=args.sampling, **given)
    except HarmonSettingError as error:
        if error.field == "sampling":
            raise CommandError(f"--sampling {args.sampling}: {error}") from None
        flagged = given.get(error.field) is not None  # else the default (ShapesEval's or the model's) is at fault
        raise CommandError(f"{flags[error.field]} {given[error.field]}: {error}" if flagged else str(error)) from None
    if args.task in ("inpaint", "outpaint", "vary", "edit"):
        return _run_canvas_eval(args, model, tokenizer, given)
    if args.task == "phrasing":
        return _run_phrasing_eval(args, model, tokenizer, settings)
    processor = load_processor(args.model, model, tokenizer)
    results = evaluate_shapes(
        model,
        tokenizer,
        processor,
        n=args.n,
        seed=args.seed,
        settings=settings,
        batch_size=args.batch_size,
        generation=not args.skip_generation,
        vqa=not args.skip_vqa,
    )
    print(format_table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(results, args.json)
        print(f"wrote {args.json}", file=sys.stderr)


def _run_shapes_geneval(args) -> None:
    """`harmon eval shapes --write-geneval-metadata FILE` / `--score-geneval DIR`: ShapesEval through GenEval's files
    (harmon_training.shapes.evaluation_geneval); neither needs the model."""
    from harmon_training.shapes.evaluation import format_table
    from harmon_training.shapes.evaluation_geneval import geneval_metadata, score_geneval_layout

    from .evaluation.geneval_layout import iter_geneval_samples

    if args.write_geneval_metadata is not None and args.score_geneval is not None:
        raise CommandError("give --write-geneval-metadata or --score-geneval, not both")
    if args.write_geneval_metadata is not None:
        target = args.write_geneval_metadata
        if target.is_dir():
            raise CommandError(f"--write-geneval-metadata {str(target)!r} is a folder; give a file name")
        lines = [json.dumps(line, ensure_ascii=False) for line in geneval_metadata(args.n, args.seed)]
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as temporary:
            temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {len(lines)} prompts to {target}", file=sys.stderr)
        return
    folder = args.score_geneval
    if not folder.is_dir():
        raise CommandError(f"--score-geneval {str(folder)!r} is not a folder")
    try:
        results = score_geneval_layout(iter_geneval_samples(folder))
    except (ValueError, OSError) as error:
        raise CommandError(f"--score-geneval {str(folder)!r}: {error}") from None
    results["layout"] = str(folder)
    table = {"n": results["n"], "seed": "(per line)", "generation": results["generation"], "vqa": None}
    print(format_table(table))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(results, args.json)
        print(f"wrote {args.json}", file=sys.stderr)


def _share_line(name: str, score: dict) -> str:
    """One score of `share_with_se` as the image-conditioned tasks print it: fraction (count/n, SE)."""
    return f"{name:22} {score['value']:.3f} ({score['count']}/{score['n']}, SE {score['se']:.3f})"


def _run_phrasing_eval(args, model, tokenizer, settings: dict) -> None:
    """`harmon eval shapes --task phrasing`: prints each (task, wording) score and the seen - held-out gaps; --json
    also holds the scores by phrasing name. `settings`: resolved as for `--task generate` (the model's, under the
    flags), so the three wordings are drawn as ShapesEval draws its prompts."""
    from harmon_training.shapes.evaluation_edit import evaluate_phrasing

    processor = load_processor(args.model, model, tokenizer)
    results = evaluate_phrasing(
        model, tokenizer, processor, n=args.n, seed=args.seed, settings=settings, batch_size=args.batch_size
    )
    for task in ("generation", "vqa"):
        for wording in ("canonical", "seen", "held_out"):
            print(_share_line(f"{task} {wording}", results[task][wording]))
    for task in ("generation", "vqa"):
        gap = results[task]["seen"]["value"] - results[task]["held_out"]["value"]
        print(f"{task + ' seen - held_out':26} {gap:+.3f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(results, args.json)
        print(f"wrote {args.json}", file=sys.stderr)


def _run_canvas_eval(args, model, tokenizer, given: dict) -> None:
    """`harmon eval shapes --task inpaint|outpaint|vary|edit`: prints the scores (fractions, counts, standard
    errors)."""
    # Only what the flags set: the rest is the model's, and its MAR iterations scale with the share drawn.
    settings = {PIPELINE_NAMES.get(field, field): value for field, value in given.items() if value is not None}
    if args.sampling is not None:
        settings["sampling"] = args.sampling
    if args.edit_mode is not None:
        settings["edit_mode"] = args.edit_mode
    if args.task == "inpaint":
        from harmon_training.shapes.evaluation_inpaint import evaluate_inpaint

        results = evaluate_inpaint(model, tokenizer, n=args.n, seed=args.seed, settings=settings)
        for name in ("success", "kept", "text_to_image", "success_with_paste_back"):
            print(_share_line(name, results[name]))
        print(
            f"PSNR of the unmasked region: {results['psnr_unmasked_db']} dB raw, "
            f"{results['psnr_unmasked_db_with_paste_back']} dB with paste-back; {results['seconds_per_item']} s per item"
        )
    elif args.task == "edit":
        from harmon_training.shapes.evaluation_edit import evaluate_edit

        results = evaluate_edit(model, tokenizer, n=args.n, seed=args.seed, settings=settings)
        groups = {"all": results, **results["by_group"], **results["by_operation"]}
        for group, scores in groups.items():
            for name in ("success", "preservation", "unchanged", "description", "reading"):
                if scores.get(name) is not None:
                    print(_share_line(f"{group} {name}", scores[name]))
        if results["edit_warning"] is not None:
            print(f"harmon eval shapes: warning: {results['edit_warning']}", file=sys.stderr)
    elif args.task == "outpaint":
        from harmon_training.shapes.evaluation_outpaint import evaluate_outpaint

        results = evaluate_outpaint(model, tokenizer, n=args.n, seed=args.seed, settings=settings)
        for name in ("success", "text_to_image"):
            print(_share_line(name, results[name]))
    else:
        from harmon_training.shapes.evaluation_vary import evaluate_vary

        results = evaluate_vary(model, tokenizer, n=args.n, seed=args.seed, settings=settings)
        for strength, scores in results["strengths"].items():
            print(_share_line(f"strength {strength} preserved", scores["preserved"]))
            print(_share_line(f"strength {strength} distinct", scores["distinct"]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(results, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
