"""`HarmonTrainer`: `transformers.Trainer` for Harmon's mixed understanding / generation training.

What the stock Trainer does not know and this subclass adds:
- single-task micro-batches (text CE, image-to-text CE, text-to-image diffusion loss, and the edit loss: the same
  diffusion loss on the target with the source images in the prompt: `context_pixel_values`) from a rank-synchronised
  stream, each task backpropagated on its own with its loss weight and optional gradient clipping;
- conditioning distillation (task `distill`): a frozen copy of the starting model (the teacher) gives the diffusion
  head's conditioning for a prompt it already draws well (an edit's target caption, a reworded prompt's canonical
  wording), and the model learns to give the same for the new prompt form, at the same masked tokens; the diffusion
  head does not run. It teaches a new way of asking without moving what the model draws;
- per-module-group learning rates and the reference's weight-decay rule (none for 1-D parameters, biases and the
  diffusion head);
- a data stream that restarts at the exact micro-batch of a checkpoint (no re-reading of skipped data);
- checkpoints written as complete Hub folders (the `harmon convert` layout) and renamed into place atomically,
  with the weights' moving average (training/ema.py) when one is kept.
"""

import copy
import math
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from modeling_harmon.output_folders import (
    clean_stale_siblings,
    is_marked,
    staging_name,
    swap_in_folder,
    usual_permissions,
    write_marker,
    writer_id,
)


TASKS = ("text", "image2text", "text2image", "edit", "distill")
# The order `trained_tasks` lists tasks in (generation first, as the paper's ratios are given); others follow sorted.
TASK_ORDER = ("text2image", "image2text", "text", "edit")


def trained_tasks(recorded: list[str] | None, ratio: dict[str, int]) -> list[str]:
    """The tasks a model has been trained for after this run: those `recorded` in its starting config (None: unknown,
    nothing to keep) and those this run's `ratio` gives micro-batches. `distill` is not an ability: what it teaches
    (editing, with source images in its prompts; else text-to-image) is added as its micro-batches show it."""
    tasks = set(recorded or ()) | {task for task, count in ratio.items() if count > 0 and task != "distill"}
    return [task for task in TASK_ORDER if task in tasks] + sorted(tasks - set(TASK_ORDER))


def _unwrap(model):
    """The Harmon model under DDP / PEFT wrappers (for its config and methods, not for the forward)."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def group_of(name: str, groups: dict) -> str | None:
    """Name of the first group one of whose patterns is found in the parameter `name` (None: no group)."""
    for group_name, group in groups.items():
        if any(re.search(pattern, name) for pattern in group["patterns"]):
            return group_name
    return None


def no_decay(name: str, parameter: torch.nn.Parameter, patterns: list[str]) -> bool:
    """The reference's rule: no weight decay for 1-D parameters, biases, and (by pattern) the diffusion head."""
    return parameter.ndim <= 1 or name.endswith(".bias") or any(re.search(pattern, name) for pattern in patterns)


def apply_trainable(model, groups: dict) -> dict[str, int]:
    """Freeze the parameters of groups with `trainable: false` (and the VAE, always); returns trainable counts."""
    counts = defaultdict(int)
    for name, parameter in model.named_parameters():
        if ".vae." in f".{name}":
            parameter.requires_grad_(False)
            continue
        group = group_of(name, groups)
        if group is not None and not groups[group].get("trainable", True):
            parameter.requires_grad_(False)
        if parameter.requires_grad:
            counts[group or "other"] += parameter.numel()
    return dict(counts)


def parameter_groups(model, groups: dict, weight_decay: float, no_decay_patterns: list[str]) -> list[dict]:
    """Optimizer groups: one (decay, no-decay) pair per configured module group, each with its learning rate.

    Trainable parameters that match no group are an error (they would silently train at some default rate).
    """
    buckets: dict[tuple[str, bool], list] = defaultdict(list)
    unmatched = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        group = group_of(name, groups)
        if group is None:
            unmatched.append(name)
            continue
        buckets[(group, no_decay(name, parameter, no_decay_patterns))].append(parameter)
    if unmatched:
        raise ValueError(
            f"trainable parameters match no optim.groups pattern: {unmatched[:5]}{' ...' if len(unmatched) > 5 else ''}; "
            f"add a pattern or freeze them."
        )
    result = []
    for (group, skip_decay), parameters in sorted(buckets.items()):
        decay = 0.0 if skip_decay else groups[group].get("weight_decay", weight_decay)
        result.append(
            {
                "params": parameters,
                "lr": groups[group]["lr"],
                "weight_decay": decay,
                "group_name": f"{group}{'/no_decay' if skip_decay else ''}",
            }
        )
    return result


class HarmonTrainer(Trainer):
    """Trainer over single-task micro-batches; see the module docstring.

    Args (besides the Trainer's):
        harmon_config: the training config (training/config.py).
        stream_factory: `(start) -> IterableDataset` of this rank's micro-batches from global position `start` on
            (a `MicroBatchStream`, which also splits the positions among DataLoader workers).
        hub_writer: `(folder, model) -> None` writes the checkpoint's Hub files (weights, code, processor, card).
        ema: an `EmaCallback` to step after each optimizer step and save with each checkpoint (None: no EMA).
    """

    def __init__(
        self,
        *args,
        harmon_config: dict,
        stream_factory: Callable,
        hub_writer: Callable | None = None,
        ema=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.ema = ema
        if ema is not None:
            self.add_callback(ema)
        self.harmon_config = harmon_config
        self.stream_factory = stream_factory
        self.hub_writer = hub_writer
        self.start_position = 0
        # Losses are averaged per micro-batch by the model; `num_items_in_batch` (labels counted across the
        # accumulation window) would mix tasks that have no labels.
        self.model_accepts_loss_kwargs = False
        self._task_loss = defaultdict(float)
        self._task_batches = defaultdict(int)
        self._samples = 0
        self._last_log_time = time.time()
        self.skipped_samples = Counter()  # this rank's data skips by reason (the stream reports them per batch)
        # The distillation teacher: the model as it starts this run (before a resumed checkpoint's weights), frozen.
        self.teacher = None
        if harmon_config["data"]["ratio"].get("distill", 0) > 0:
            self.teacher = copy.deepcopy(_unwrap(self.model)).eval().requires_grad_(False)

    # ------------------------------------------------------------------------------------------------ data
    def get_train_dataloader(self) -> DataLoader:
        """This rank's micro-batches, starting at `start_position` (set from the checkpoint on resume). Not passed
        through `accelerator.prepare`: the stream is already sharded by rank and synchronised across ranks."""
        workers = self.harmon_config["data"]["num_workers"]
        return DataLoader(
            self.stream_factory(self.start_position),
            batch_size=None,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            # Its own generator: starting an iterator would otherwise draw from the global RNG, and a resumed run
            # (which starts one right after restoring that RNG) would then diverge from an uninterrupted run.
            generator=torch.Generator().manual_seed(self.args.seed),
        )

    # ------------------------------------------------------------------------------------------- optimizer
    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            optim = self.harmon_config["optim"]
            groups = parameter_groups(
                model or self.model, optim["groups"], optim["weight_decay"], optim["no_decay_patterns"]
            )
            self.optimizer = torch.optim.AdamW(
                groups, lr=self.args.learning_rate, betas=tuple(optim["betas"]), eps=optim["eps"]
            )
        return self.optimizer

    # ------------------------------------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The micro-batch's own loss (mean over its supervised tokens or masked image tokens), unweighted."""
        inputs = dict(inputs)
        task = inputs.pop("task")
        if task == "text2image":
            outputs = model(generation_targets=True, **inputs)
        elif task == "edit":  # the target's loss with the sources in the prompt (`context_pixel_values`)
            outputs = model(generation_targets=True, **inputs)
        elif task == "distill":  # the teacher's conditioning as target, at the same masked tokens
            outputs = model(generation_targets=True, **self._distillation_inputs(model, inputs))
        elif task in ("image2text", "text"):
            outputs = model(**inputs)
        else:
            raise ValueError(f"micro-batch task must be one of {TASKS}, got {task!r}.")
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _distillation_inputs(self, model, inputs: dict) -> dict:
        """A distill micro-batch's `text_to_image_loss` arguments: its target latents, a drawn mask, and the teacher's
        conditioning for its teacher prompts with that mask (`condition_targets`)."""
        student = _unwrap(model)
        teacher_ids, teacher_mask = inputs.pop("teacher_input_ids"), inputs.pop("teacher_attention_mask")
        latents = inputs.pop("latents", None)
        with torch.no_grad():
            if latents is None:
                latents = student.model.encode_images(inputs.pop("pixel_values"))
            batch, rows, cols, _ = latents.shape
            mask = student.draw_generation_mask(batch, rows * cols, device=latents.device)
            self.teacher.to(latents.device)
            targets, _ = self.teacher.generation_condition(teacher_ids, teacher_mask, latents, mask)
        return {**inputs, "latents": latents, "mask": mask, "condition_targets": targets}

    def _note_taught(self, model, inputs: dict) -> None:
        """Record in the model's `trained_tasks` what a distill micro-batch teaches (checkpoints then say it)."""
        config = _unwrap(model).config
        taught = "edit" if "context_pixel_values" in inputs else "text2image"
        recorded = getattr(config, "trained_tasks", None)
        if recorded is None or taught not in recorded:
            config.trained_tasks = trained_tasks([*(recorded or ()), taught], {})

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """Forward and backward of ONE single-task micro-batch: loss weight, 1/accumulation scaling and, if
        configured, clipping of this task's own gradient contribution before it joins the accumulated gradient."""
        model.train()
        inputs = dict(inputs)
        self.skipped_samples.update(inputs.pop("skipped", None) or {})
        task = inputs["task"]
        if task == "distill":
            self._note_taught(model, inputs)
        samples = int(inputs["input_ids"].shape[0])
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        optim = self.harmon_config["optim"]
        weighted = loss * float(optim["task_loss_weights"].get(task, 1.0)) / self.current_gradient_accumulation_steps
        clip = optim["task_max_grad_norm"].get(task)
        parameters = [p for p in model.parameters() if p.requires_grad]
        stash = None
        if clip is not None:
            stash = [p.grad for p in parameters]
            for p in parameters:
                p.grad = None
        self.accelerator.backward(weighted)
        if stash is not None:
            if not getattr(model, "require_backward_grad_sync", True):
                # DDP inside the Trainer's `no_sync` (every micro-batch of a step but the last) leaves this
                # micro-batch's gradient rank-local, and DDP's own all-reduce at the last one would only see that
                # micro-batch (the others are stashed). Average it here, so the clip sees the same global task
                # gradient on every rank.
                average_gradients_across_ranks(parameters)
            torch.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], float(clip))
            for p, previous in zip(parameters, stash):
                if previous is not None:
                    p.grad = previous if p.grad is None else p.grad + previous
        self._task_loss[task] += float(loss.detach())
        self._task_batches[task] += 1
        self._samples += samples
        return weighted.detach()

    def skipped_samples_all_ranks(self) -> dict[str, int]:
        """Skipped samples by reason, summed over the ranks (a collective: every rank must call it)."""
        reasons = sorted(self.skipped_samples)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from accelerate.utils import gather_object

            merged = Counter()
            for counts in gather_object([dict(self.skipped_samples)]):
                merged.update(counts)
            return dict(sorted(merged.items()))
        return {reason: self.skipped_samples[reason] for reason in reasons}

    # ------------------------------------------------------------------------------------------------ logs
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds per-task losses, per-group learning rates and samples/s (this rank) since the previous log."""
        if "loss" in logs:
            for task in TASKS:
                if self._task_batches[task]:
                    logs[f"loss_{task}"] = round(self._task_loss[task] / self._task_batches[task], 6)
            if self.optimizer is not None:
                for group in self.optimizer.param_groups:
                    logs[f"lr_{group.get('group_name', 'group')}"] = group["lr"]
            elapsed = max(time.time() - self._last_log_time, 1e-9)
            logs["samples_per_second"] = round(self._samples / elapsed, 3)
            self._task_loss.clear()
            self._task_batches.clear()
            self._samples = 0
            self._last_log_time = time.time()
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------ checkpoints
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """A checkpoint is a Hub folder (`harmon push` works on it); a LoRA run saves its adapter there too."""
        if not self.args.should_save:  # the Trainer calls `_save` on every rank; one writes
            return
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        if self.hub_writer is None:
            return super()._save(str(output_dir), state_dict)
        self.hub_writer(output_dir, self.model)
        torch.save(self.args, output_dir / "training_args.bin")

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-N` into a hidden staging folder and swap it into place when complete, so a crash never
        leaves a half-written checkpoint that `--resume` would pick, nor loses an existing one. The staging name
        carries rank 0's host and PID (every rank writes its RNG state there), so a later run removes it only once
        this run is gone (`output_folders.clean_stale_siblings`)."""
        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"checkpoint-{self.state.global_step}"
        final = run_dir / name
        staging_root = run_dir / staging_name(final, self._writer_id())
        if self.args.should_save:
            clean_stale_siblings(final)
            shutil.rmtree(staging_root, ignore_errors=True)  # this run's own, from an interrupted save
        self.accelerator.wait_for_everyone()
        output_dir = self.args.output_dir
        limit = self.args.save_total_limit
        self.args.output_dir, self.args.save_total_limit = str(staging_root), None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir, self.args.save_total_limit = output_dir, limit
        if self.ema is not None and self.args.should_save:
            self.ema.save(staging_root / name)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            write_marker(staging_root / name, "training.train")
            usual_permissions(staging_root / name)
            swap_in_folder(staging_root / name, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            _keep_newest_checkpoints(run_dir, self.args.save_total_limit)
        self.accelerator.wait_for_everyone()

    def _writer_id(self) -> str:
        """Rank 0's "HOST.PID", the same on every rank."""
        if getattr(self, "_harmon_writer_id", None) is None:
            from accelerate.utils import broadcast_object_list

            value = [writer_id()]
            if self.accelerator.num_processes > 1:
                broadcast_object_list(value, from_process=0)
            self._harmon_writer_id = value[0]
        return self._harmon_writer_id


def average_gradients_across_ranks(parameters: list[torch.nn.Parameter]) -> None:
    """Replace each parameter's `.grad` by its mean over the ranks of the default process group (one coalesced
    all-reduce). A parameter without a gradient on some rank counts as zero there; one without a gradient on every
    rank keeps None. No-op outside an initialised group of more than one rank."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1:
        return
    device = next((p.grad.device for p in parameters if p.grad is not None), torch.device("cpu"))
    present = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(present, op=torch.distributed.ReduceOp.MAX)
    synced = [p for p, flag in zip(parameters, present.tolist()) if flag]
    if not synced:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in synced]
    flat = torch._utils._flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat)
    flat /= world
    for p, mean in zip(synced, torch._utils._unflatten_dense_tensors(flat, grads)):
        p.grad = mean.view_as(p)


def _keep_newest_checkpoints(run_dir: Path, limit: int | None) -> None:
    """Delete all but the `limit` newest `checkpoint-N` folders (by N); `None` or < 1 keeps all. (The Trainer's own
    rotation helper moved between transformers releases; this rule is the same on all of them.)"""
    if not limit or limit < 1:
        return
    steps = sorted(
        int(path.name.split("-")[1])
        for path in run_dir.glob("checkpoint-*")
        if path.name.split("-")[1].isdigit() and is_marked(path)  # only the checkpoints harmon wrote
    )
    for step in steps[:-limit]:
        shutil.rmtree(run_dir / f"checkpoint-{step}", ignore_errors=True)


def micro_batches_per_step(config: dict, world_size: int) -> tuple[int, int]:
    """(gradient accumulation steps = micro-batches per optimizer step, cycles per step) for this config.

    With `train.global_batch_size`, the cycles per step are the smallest number whose samples (over all ranks) reach
    that batch; otherwise `train.cycles_per_step`."""
    ratio, sizes = config["data"]["ratio"], config["data"]["micro_batch_size"]
    cycle_length = sum(ratio.values())
    cycles = config["train"]["cycles_per_step"]
    if config["train"]["global_batch_size"]:
        samples_per_cycle = sum(count * sizes[task] for task, count in ratio.items() if count) * world_size
        cycles = max(1, math.ceil(config["train"]["global_batch_size"] / samples_per_cycle))
    return cycle_length * cycles, cycles
