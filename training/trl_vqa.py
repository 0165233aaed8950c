"""TRL recipe: LoRA fine-tuning of Harmon's LLM on visual question answering with `trl.SFTTrainer`.

    python -m training.trl_vqa --model harmon-0.5b-hf/ --data llava_v1_5_mix665k.json --image-folder data/ \\
        --output-dir runs/vqa-lora [--max-steps N] [--batch-size 8] [--learning-rate 1e-4] [--lora-r 16] ...

Several GPUs: `accelerate launch -m training.trl_vqa ...`. This is the light-weight path for understanding-only
adapters; `python -m training.train` (with `--lora`) is the full recipe (text-to-image, task mixing, MAR groups).

What is trained: LoRA adapters on the LLM's attention and MLP projections (`lora["target_modules"]`, a regex over
module names, default the one of the training config). The MAR encoder/decoder, the diffusion head, the bridge
projections and the VAE are frozen.

Data: LLaVA records `{"image": "relative/path.jpg", "conversations": [{"from": "human", "value": "<image>\\nQ"},
{"from": "gpt", "value": "A"}, ...]}` (a `.json` list or one record per line in `.jsonl`) become rows of TRL's
conversational prompt-completion vision format (`load_llava_dataset`):

    {"images": [image], "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q}]}],
     "completion": [{"role": "assistant", "content": [{"type": "text", "text": A}]}]}

one row per answer (earlier turns are the prompt's context; `every_turn=False` / `--last-turn-only` keeps the final
answer only, which encodes each image once per record instead of once per answer). As in LLaVA, the image goes first
in its turn, which the processor renders as `<image>\\nQ`, the reference's prompt format.

How TRL uses the processor: for image datasets, `SFTTrainer` skips dataset preparation and collates on the fly with
`DataCollatorForVisionLanguageModeling`. On prompt-completion rows that collator renders each prompt with
`processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)` and the completion as the rest of
the rendered prompt + completion (`A<|im_end|>\\n`), then calls `processor(images=[[image], ...], text=prompts,
padding=True, padding_side="left", add_special_tokens=False)` (which expands every `<image>` to its placeholders) and
`processor(text=completions, padding_side="right", ...)`, concatenates and flushes left. With `completion_only_loss`
(TRL's default for this format) the labels are -100 everywhere but on the completion: the prompt and the image
placeholders (whose id may lie outside the LLM vocabulary) carry no loss. Training calls `model(**batch,
fused_lm_head=True)`: TRL patches the model's `forward` (in place) with a chunked LM head that runs `model.model`
(Harmon's backbone, with `pixel_values`) and `lm_head`, so Harmon's own `forward` loss is not used in training (the two
agree; the tests check it).

Why not TRL's conversational `"messages"` format: its collator trains on every token, including the image placeholders,
and its `assistant_only_loss` needs `{% generation %}` markers in the chat template and the processor's
`return_assistant_tokens_mask`, neither of which `HarmonProcessor` has. `build_vqa_sft_trainer` refuses such datasets.

Sequence length: `max_length` truncates the concatenated prompt + completion from the end. It must leave room for the
image placeholders, `(H / 16) * (W / 16) + 64` per image for Harmon (320 at 256 px, 1088 at 512 px), or the model
raises on the placeholder count; the default is one image's placeholders plus `MAX_TEXT_TOKENS`. Unlike
`python -m training.train`, which supervises answers up to `<|im_end|>`, TRL's completion also holds the newline the
template writes after it.

The run folder (`trainer.save_model`) holds `adapter_config.json`, `adapter_model.safetensors` and the processor.
Reload, or merge into a plain checkpoint:

    from peft import PeftModel
    from transformers import AutoModel
    import modeling_harmon  # registers Harmon with the Auto classes (or pass trust_remote_code=True for a Hub repo)

    model = PeftModel.from_pretrained(AutoModel.from_pretrained("harmon-0.5b-hf/"), "runs/vqa-lora")
    merged = model.merge_and_unload()  # a HarmonForConditionalGeneration with the adapter folded in
    merged.save_pretrained("harmon-vqa-merged/")

(`AutoPeftModel.from_pretrained(run_dir)` refuses it without `import_allowlist=["modeling_harmon.modeling_harmon"]`:
PEFT records the base class's module and imports only allow-listed libraries.)
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from datasets import Dataset, Features, Image, List, Value
from peft import LoraConfig
from transformers import AutoModel, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from modeling_harmon import HarmonProcessor

from .config import DEFAULTS, resolve_bf16


# Text tokens per row on top of one image's placeholders when `max_length` is not given.
MAX_TEXT_TOKENS = 1024
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")
LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
IMAGE_TAG = "<image>"

_MESSAGE = {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
FEATURES = Features({"images": List(Image()), "prompt": List(_MESSAGE), "completion": List(_MESSAGE)})


# ---------------------------------------------------------------------------------------------------------- data
def llava_to_prompt_completion(record: dict, image_folder: str | Path, every_turn: bool = True) -> list[dict]:
    """TRL prompt-completion rows of one LLaVA record (see the module docstring).

    Args:
        record: `{"image": path or list of paths (optional), "conversations": [{"from": "human" | "gpt" | "system",
            "value": str}, ...]}`; each image has one `<image>` tag in the conversation, and answers come from `gpt`.
        image_folder: where relative image paths start.
        every_turn: one row per answer (each with the turns before it as prompt), or only one for the last answer.

    Returns:
        Rows `{"images": [path, ...], "prompt": [message, ...], "completion": [message]}`; images stay paths, so that
        the dataset decodes them only when a batch needs them.
    """
    paths = record.get("image")
    paths = [] if paths is None else [paths] if isinstance(paths, str) else list(paths)
    images = [str(Path(image_folder) / path) for path in paths]
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"a LLaVA record needs a non-empty `conversations` list, got {turns!r:.200}.")
    messages = []
    for turn in turns:
        role = LLAVA_ROLES.get(turn.get("from"))
        if role is None or not isinstance(turn.get("value"), str):
            raise ValueError(
                f"LLaVA turns are {{'from': one of {sorted(LLAVA_ROLES)}, 'value': str}}, got {turn!r:.200}."
            )
        text = turn["value"]
        # Like LLaVA, the images of a turn go first: Harmon's template renders them as `<image>\n{text}`.
        content = [{"type": "image"} for _ in range(text.count(IMAGE_TAG))]
        text = text.replace(IMAGE_TAG, "").strip()
        content += [{"type": "text", "text": text}] if text or not content else []
        messages.append({"role": role, "content": content})
    num_tags = sum(item["type"] == "image" for message in messages for item in message["content"])
    if num_tags != len(images):
        raise ValueError(
            f"a LLaVA record needs one {IMAGE_TAG} per image; got {num_tags} tags and {len(images)} images "
            f"({paths!r:.200})."
        )
    answers = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
    if not answers:
        raise ValueError(f"a LLaVA record needs at least one `gpt` answer, got {turns!r:.200}.")
    if any(item["type"] == "image" for index in answers for item in messages[index]["content"]):
        raise ValueError(f"{IMAGE_TAG} must be in a human turn, not in an answer: {turns!r:.200}.")
    return [
        {"images": images, "prompt": messages[:index], "completion": [messages[index]]}
        for index in (answers if every_turn else answers[-1:])
    ]


def load_llava_dataset(path: str | Path, image_folder: str | Path | None = None, every_turn: bool = True) -> Dataset:
    """A `datasets.Dataset` of TRL prompt-completion rows from a LLaVA `.json` list or `.jsonl` file.

    Args:
        path: the LLaVA file; `.jsonl` holds one record per line, anything else a JSON list of records.
        image_folder: where relative image paths start; defaults to the folder of `path`.
        every_turn: see [`llava_to_prompt_completion`].

    Raises:
        FileNotFoundError: when an image is missing (checked here, not halfway through training).
    """
    path = Path(path)
    image_folder = path.parent if image_folder is None else Path(image_folder)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        records = json.loads(text)
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path} must hold a non-empty list of LLaVA records.")
    rows = []
    for number, record in enumerate(records):
        try:
            rows += llava_to_prompt_completion(record, image_folder, every_turn=every_turn)
        except ValueError as error:
            raise ValueError(f"{path}, record {number}: {error}") from None
    missing = sorted({image for row in rows for image in row["images"] if not Path(image).is_file()})
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images of {path} are not under image_folder {str(image_folder)!r}, e.g. {missing[:3]}."
        )
    return Dataset.from_list(rows, features=FEATURES)


# ------------------------------------------------------------------------------------------------------- trainer
def vqa_lora_config(lora: dict | None = None) -> LoraConfig:
    """The `LoraConfig` of `lora` = `{"r", "alpha", "dropout", "target_modules"}` (any subset; the rest defaults to the
    training config's `lora` section: r=16, alpha=32, dropout=0.05, the LLM's attention and MLP projections)."""
    unknown = sorted(set(lora or {}) - set(LORA_KEYS))
    if unknown:
        raise ValueError(f"lora has unknown keys {unknown}; allowed: {list(LORA_KEYS)}.")
    settings = {**{key: DEFAULTS["lora"][key] for key in LORA_KEYS}, **(lora or {})}
    # task_type stays None: PeftModel then passes every input (pixel_values included) to Harmon's forward untouched.
    return LoraConfig(
        r=int(settings["r"]),
        lora_alpha=int(settings["alpha"]),
        lora_dropout=float(settings["dropout"]),
        target_modules=settings["target_modules"],
    )


def build_vqa_sft_trainer(
    model,
    processor: HarmonProcessor,
    train_dataset: Dataset,
    output_dir: str | Path,
    lora: dict | None = None,
    max_steps: int = 1000,
    per_device_train_batch_size: int = 8,
    gradient_accumulation_steps: int = 1,
    learning_rate: float = 1e-4,
    max_length: int | None = None,
    bf16: bool | None = None,
    **sft_config_kwargs,
) -> SFTTrainer:
    """An `SFTTrainer` that trains LoRA adapters of `model`'s LLM on `train_dataset`'s answers.

    Args:
        model ([`HarmonForConditionalGeneration`]): the model to adapt. It is modified in place: PEFT injects the
            adapters and TRL patches its `forward` (see the module docstring); `trainer.model` is the `PeftModel`.
        processor ([`HarmonProcessor`]): renders and tokenises the rows and preprocesses their images; its image size
            is the training resolution.
        train_dataset: TRL prompt-completion rows with an `images` column (e.g. from [`load_llava_dataset`]).
        output_dir: run folder (checkpoints, and the adapter after `trainer.save_model()`).
        lora: LoRA settings, see [`vqa_lora_config`].
        max_steps, per_device_train_batch_size, gradient_accumulation_steps, learning_rate: optimisation settings.
        max_length: longest prompt + answer in tokens; defaults to one image's placeholders plus `MAX_TEXT_TOKENS`,
            and must exceed one image's placeholders.
        bf16: bf16 mixed precision; defaults to whether a CUDA device supports it.
        sft_config_kwargs: further [`trl.SFTConfig`] arguments (`logging_steps`, `save_steps`, `seed`, `report_to`,
            `gradient_checkpointing`, `lr_scheduler_type`, `use_cpu`, ...).
    """
    columns = set(train_dataset.column_names)
    if not {"images", "prompt", "completion"} <= columns:
        raise ValueError(
            f"train_dataset must have the columns images, prompt and completion (TRL's prompt-completion vision "
            f"format; see load_llava_dataset), got {sorted(columns)}. A 'messages' dataset would put loss on the "
            f"prompt and the image placeholders."
        )
    placeholders = processor.image_processor.num_image_placeholders()
    if max_length is None:
        max_length = placeholders + MAX_TEXT_TOKENS
    elif max_length <= placeholders:
        raise ValueError(
            f"max_length must exceed the {placeholders} placeholders of one image at the processor's size "
            f"{processor.image_processor.size}, got {max_length}."
        )
    if bf16 is None:
        bf16 = resolve_bf16("auto")
    args = SFTConfig(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        max_length=max_length,
        bf16=bf16,
        completion_only_loss=True,
        # The collator needs the raw `images` / `prompt` / `completion` columns, which `forward` does not take.
        remove_unused_columns=False,
        **sft_config_kwargs,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=vqa_lora_config(lora),
    )


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.trl_vqa", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="Harmon checkpoint folder or Hub repo")
    parser.add_argument("--data", required=True, help="LLaVA records: a .json list or a .jsonl file")
    parser.add_argument("--image-folder", default=None, help="root of relative image paths (default: --data's folder)")
    parser.add_argument("--output-dir", required=True, help="run folder; the adapter and processor end up here")
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8, help="per device")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--lora-r", type=int, default=DEFAULTS["lora"]["r"])
    parser.add_argument("--lora-alpha", type=int, default=DEFAULTS["lora"]["alpha"])
    parser.add_argument("--lora-dropout", type=float, default=DEFAULTS["lora"]["dropout"])
    parser.add_argument("--lora-target-modules", default=DEFAULTS["lora"]["target_modules"], help="module-name regex")
    parser.add_argument("--image-size", type=int, default=None, help="training resolution (default: the model's)")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per row, image placeholders included")
    parser.add_argument("--last-turn-only", action="store_true", help="train on each record's last answer only")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: if the GPU can")
    parser.add_argument("--save-steps", type=int, default=500)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-to", default="none", help="none, tensorboard, wandb, ...")
    return parser


def run(args: argparse.Namespace) -> SFTTrainer:
    """Train and save the adapter and processor to `args.output_dir`; returns the trainer."""
    # float32 weights, as TRL loads them; `bf16` autocasts the computation.
    model = AutoModel.from_pretrained(args.model, dtype=torch.float32, trust_remote_code=False)
    processor = HarmonProcessor.from_model_config(
        model.config, AutoTokenizer.from_pretrained(args.model, trust_remote_code=False), image_size=args.image_size
    )
    dataset = load_llava_dataset(args.data, args.image_folder, every_turn=not args.last_turn_only)
    lora = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout}
    trainer = build_vqa_sft_trainer(
        model,
        processor,
        dataset,
        args.output_dir,
        lora={**lora, "target_modules": args.lora_target_modules},
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        bf16=args.bf16,
        save_steps=args.save_steps,
        logging_steps=args.logging_steps,
        seed=args.seed,
        report_to=args.report_to,
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    return trainer


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
