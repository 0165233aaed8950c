"""Train Harmon: the paper's three stages, fine-tuning, decoder-only and LoRA runs from one script.

    python -m training.train --config training/configs/stage1_alignment.yaml --model harmon-0.5b-hf/ \\
        --output-dir runs/stage1 [--max-steps N] [--resume | --overwrite] [--data KIND=FORMAT:PATH ...] \\
        [--set key=value ...] [--lora]

KIND is caption, vqa, text, t2i or edit; FORMAT is reference_folder, llava_json, jsonl or hf; options follow a `?`
(`caption=jsonl:data/caps.jsonl?weight=2`,
`edit=hf:osunlp/MagicBrush?split=train&source_column=source_img&target_column=target_img`). `--data` replaces the
config's sources of that kind and keeps the configured ratios. `--set a.b=v` parses v as YAML
(`--set image_size=512 --set optim.groups.llm.lr=2e-6`).

Several processes: `torchrun --nproc_per_node N -m training.train ...` (CPU: gloo; GPUs: NCCL), or
`accelerate launch --num_processes N -m training.train ...` on GPUs (`accelerate launch --cpu --num_processes N`
silently runs ONE process: use torchrun on CPUs). DeepSpeed ZeRO-2 / FSDP: `--set train.deepspeed=...` is not a
key; pass the files in training/configs/ to `accelerate launch --config_file`.

A fresh run needs a new or empty `--output-dir`; one that holds files needs `--resume` or `--overwrite`
(training/run_folder.py). Mistakes in the arguments, the config or the data paths end the command before the model
loads, with exit status 2 and one line. The samples skipped as unusable are printed at the end and saved in
`--output-dir/data_skips.json`. The saved model's config records in `trained_tasks` the tasks this run trained
(ratio > 0) together with those its starting checkpoint recorded.
"""

import argparse
import json
import os
import pickle
import sys
from pathlib import Path

import torch
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from modeling_harmon import HarmonProcessor
from modeling_harmon.output_folders import OutputFolderError, replace_folder

from .config import ConfigError, load_config, replace_sources, resolve_bf16
from .data import LatentsCache, MicroBatchStream, SourceSpec
from .ema import EmaCallback
from .lora import apply_lora, merge_adapter
from .model_init import load_model
from .run_folder import input_paths, prepare_run_folder
from .trainer import HarmonTrainer, _unwrap, apply_trainable, micro_batches_per_step, trained_tasks


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="stage YAML (training/configs/*.yaml)")
    parser.add_argument("--model", default=None, help="checkpoint folder or Hub repo to start from")
    parser.add_argument("--output-dir", default=None, help="run folder (checkpoints, final model)")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train into a non-empty --output-dir again (harmon's checkpoints there are removed first)",
    )
    parser.add_argument("--data", action="append", default=[], metavar="KIND=FORMAT:PATH[?opts]")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    parser.add_argument("--lora", action="store_true", help="same as --set lora.enabled=true")
    return parser


def resolve_config(args) -> dict:
    overrides = list(args.overrides)
    if args.model is not None:
        overrides += [f"model.path={args.model}", "model.init=pretrained"]
    if args.output_dir is not None:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.lora:
        overrides.append("lora.enabled=true")
    config = load_config(args.config, overrides)
    if args.data:
        try:
            specs = [SourceSpec.parse(text) for text in args.data]
        except ValueError as error:
            raise ConfigError(f"--data: {error}") from None
        config = replace_sources(config, specs)
    if not config["data"]["sources"]:
        raise ConfigError("no data: give data.sources in the config or --data KIND=FORMAT:PATH.")
    check_data_paths(config)
    return config


def check_data_paths(config: dict) -> None:
    """Refuse a bad data source, or one whose local file or folder is missing, now rather than after the model has
    loaded. (`hf` paths may be Hub dataset ids, which only the datasets library can resolve.)"""
    for number, source in enumerate(config["data"]["sources"]):
        try:
            spec = SourceSpec.from_dict(source)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"data.sources[{number}]: {error}") from None
        where = f"data source {spec.kind}={spec.format}:{spec.path}"
        paths = [("path", spec.path)] if spec.format != "hf" else []
        paths += [(name, getattr(spec, name)) for name in ("image_folder", "annotation_folder") if getattr(spec, name)]
        for name, path in paths:
            if not os.path.exists(path):
                raise ConfigError(f"{where}: {name} {path!r}: no such file or folder.")


def training_arguments(config: dict, world_size: int) -> TrainingArguments:
    train, optim = config["train"], config["optim"]
    accumulation, _ = micro_batches_per_step(config, world_size)
    return TrainingArguments(
        output_dir=train["output_dir"],
        max_steps=train["max_steps"],
        gradient_accumulation_steps=accumulation,
        per_device_train_batch_size=1,  # micro-batches come whole from the stream
        learning_rate=max(group["lr"] for group in optim["groups"].values()),
        lr_scheduler_type=optim["scheduler"],
        warmup_steps=optim["warmup"],
        max_grad_norm=optim["max_grad_norm"] or 0.0,
        weight_decay=optim["weight_decay"],
        logging_steps=train["logging_steps"],
        save_steps=train["save_steps"],
        save_total_limit=train["save_total_limit"],
        save_strategy="steps",
        report_to=train["report_to"],
        seed=train["seed"],
        data_seed=train["seed"],
        bf16=resolve_bf16(train["bf16"]),
        gradient_checkpointing=train["gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False},
        remove_unused_columns=False,
        ignore_data_skip=True,  # the stream restarts at the checkpoint's micro-batch itself
        ddp_find_unused_parameters=True,  # an image-to-text micro-batch does not use the MAR decoder, and so on
        dataloader_num_workers=config["data"]["num_workers"],
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )


def checkpoint_writer(tokenizer, processor, lora_enabled: bool):
    """Writes a checkpoint folder: the full Hub layout, or for LoRA the adapter plus tokenizer and processor."""
    from harmon_pipelines.hub import write_hub_files

    def write(folder: Path, model) -> None:
        if lora_enabled:
            model.save_pretrained(folder)  # adapter_config.json + adapter_model.safetensors
            processor.save_pretrained(folder)
        else:
            write_hub_files(folder, model, tokenizer, processor=processor)

    return write


def run(args) -> Path:
    config = resolve_config(args)
    inputs = input_paths(config, args.config)
    is_main = int(os.environ.get("RANK", "0")) == 0
    prepare_run_folder(config["train"]["output_dir"], args.resume, args.overwrite, inputs, is_main)
    set_seed(config["train"]["seed"])
    model, tokenizer = load_model(config["model"], config["model"]["dtype"])
    # Checkpoints and the final model say what they were trained for (tools tell an editing model by it).
    model.config.trained_tasks = trained_tasks(getattr(model.config, "trained_tasks", None), config["data"]["ratio"])
    processor = HarmonProcessor.from_model_config(model.config, tokenizer, image_size=config["image_size"])
    groups = config["optim"]["groups"]
    counts = apply_trainable(model, groups)
    if config["lora"]["enabled"]:
        model = apply_lora(model, config["lora"], groups)
    arguments = training_arguments(config, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    rank, world = arguments.process_index, arguments.world_size
    data = config["data"]

    def stream_factory(start: int):
        return MicroBatchStream(
            [SourceSpec.from_dict(source) for source in data["sources"]],
            processor,
            model.config,
            ratio=data["ratio"],
            micro_batch_size=data["micro_batch_size"],
            image_size=config["image_size"],
            max_length=data["max_length"],
            t2i_max_length=data["t2i_max_length"],
            caption_dropout=data["caption_dropout"],
            min_image_side=data["min_image_side"],
            max_aspect_ratio=data["max_aspect_ratio"],
            seed=config["train"]["seed"],
            rank=rank,
            world_size=world,
            start=start,
            latents_cache=LatentsCache(data["latents_cache"]) if data["latents_cache"] else None,
            report_skips=True,
            edit_dropout=data["edit_dropout"],
        )

    ema = None
    if config["train"]["ema_decay"] is not None:
        ema = EmaCallback(model, config["train"]["ema_decay"], warmup=config["train"]["ema_warmup"])
    trainer = HarmonTrainer(
        model=model,
        args=arguments,
        processing_class=tokenizer,
        harmon_config=config,
        stream_factory=stream_factory,
        hub_writer=checkpoint_writer(tokenizer, processor, config["lora"]["enabled"]),
        ema=ema,
    )
    if rank == 0:
        print(
            f"trainable parameters by group: {counts}; micro-batches per optimizer step: "
            f"{arguments.gradient_accumulation_steps}; ranks: {world}",
            file=sys.stderr,
        )
    checkpoint = None
    if args.resume:
        checkpoint = (
            get_last_checkpoint(config["train"]["output_dir"])
            if Path(config["train"]["output_dir"]).is_dir()
            else None
        )
        if checkpoint is None:
            raise ConfigError(f"--resume: no checkpoint-* folder in {config['train']['output_dir']!r}.")
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        trainer.start_position = state["global_step"] * arguments.gradient_accumulation_steps
        if ema is not None:
            ema.load(checkpoint)
    if checkpoint is not None and state["global_step"] >= arguments.max_steps:
        # The run already reached max_steps (e.g. it was stopped at its last checkpoint, or max_steps was lowered to
        # a checkpoint's step): the Trainer would still take one more step, so only load the checkpoint's weights.
        trainer._load_from_checkpoint(checkpoint)
    else:
        # Each rank draws its own model randomness (MAR masking orders, diffusion noise and timesteps), as MAR seeds
        # `seed + rank`: with the Trainer's one seed, the micro-batches of all ranks at a step would share their noise.
        # Rank 0 keeps the seed, so a one-process run is unchanged; a resumed run restores each rank's RNG state.
        set_seed(config["train"]["seed"] + rank)
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
        except pickle.UnpicklingError:
            if checkpoint is None:
                raise
            # torch.load(weights_only=True) refused a state file (optimizer, scheduler, RNG): it holds more than
            # tensors. torch's own message suggests loading it unsafely; this one does not.
            raise ConfigError(
                f"--resume: {checkpoint!r} holds a state file that is not plain tensors (a pickle that would build "
                "Python objects); it was refused, not loaded. Resume from another checkpoint, or start again with "
                "--overwrite."
            ) from None

    output_dir = Path(config["train"]["output_dir"])
    final = output_dir / "final"
    if ema is not None:
        ema.copy_to_model()  # the final model is the average (checkpoints keep the raw weights for --resume)
    save_final(trainer, final, inputs, config, tokenizer, processor)
    report_skips(trainer.skipped_samples_all_ranks(), output_dir, trainer.args.should_save)
    return final


def save_final(trainer, final: Path, inputs: list[str], config: dict, tokenizer, processor) -> None:
    """`final/` (and `final/merged/` for a merged LoRA run) staged and swapped in like a checkpoint, so a kill while
    saving never leaves weights without their tokenizer and processor."""
    if not trainer.args.should_save:
        trainer.save_model(str(final))  # a collective on some backends; this rank writes nothing
        return
    with replace_folder(
        final, "training.train", overwrite=True, inputs=inputs, argument="--output-dir final/"
    ) as staging:
        trainer.save_model(str(staging))
        if config["lora"]["enabled"] and config["lora"]["merge_at_end"]:
            from harmon_pipelines.hub import write_hub_files

            base, _ = load_model(config["model"], config["model"]["dtype"])
            base.config.trained_tasks = list(_unwrap(trainer.model).config.trained_tasks or ())
            write_hub_files(staging / "merged", merge_adapter(base, str(staging)), tokenizer, processor=processor)


def report_skips(counts: dict[str, int], output_dir: Path, is_main: bool) -> None:
    """Print the samples skipped as unusable (by reason, all ranks) and save them in `data_skips.json`."""
    if not is_main:
        return
    from modeling_harmon.atomic_files import write_json

    total = sum(counts.values())
    shown = ", ".join(f"{reason} {count}" for reason, count in counts.items()) or "none"
    print(
        f"data: {total} samples skipped as unusable ({shown}); see {output_dir / 'data_skips.json'}", file=sys.stderr
    )
    write_json(
        {"skipped": counts, "total": total, "note": "counted by this process run (since its start or resume)"},
        output_dir / "data_skips.json",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ConfigError, OutputFolderError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
