"""Collation of single-task micro-batches: right padding, and the tensors each task's loss takes."""

import torch

from .chat import IGNORE_INDEX
from .examples import Example


def collate(task: str, examples: list[Example], pad_token_id: int) -> dict:
    """Stack `examples` of one task into a micro-batch.

    Token rows are right-padded with `pad_token_id` (`attention_mask` 0, `labels` -100 there). Text-to-image batches
    carry `latents` (B, rows, cols, D) when every example has cached latents, else `pixel_values` (B, 3, S, S). Edit
    batches carry the targets as `pixel_values` and the context images of all rows, in row order, as
    `context_pixel_values` (N, 3, S, S) (absent when every row dropped its images), which fill the rows' `<image>`
    placeholders in order, as `generate_images` fills them. Distill batches carry them as edit batches do, plus the
    teacher's prompts as `teacher_input_ids` / `teacher_attention_mask` (right-padded).

    Returns:
        `{"task", "input_ids", "attention_mask"}` plus `labels` (image2text, text) and `pixel_values` or `latents`
        (image2text, text2image, edit) and `context_pixel_values` (edit), all `torch.long` / `torch.float32` tensors.
    """
    if not examples:
        raise ValueError(f"examples must hold at least one {task} example, got none.")
    input_ids, attention_mask = _right_padded([example.input_ids for example in examples], pad_token_id)
    batch = {"task": task, "input_ids": input_ids, "attention_mask": attention_mask}
    if task not in ("text2image", "edit", "distill"):
        labels = torch.full(input_ids.shape, IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            labels[row, : len(example.labels)] = torch.tensor(example.labels, dtype=torch.long)
        batch["labels"] = labels
    if all(example.latents is not None for example in examples):
        batch["latents"] = torch.stack([example.latents.float() for example in examples])
    elif task != "text":
        batch["pixel_values"] = torch.stack([example.pixel_values for example in examples])
    context = [example.context_pixel_values for example in examples if example.context_pixel_values is not None]
    if task in ("edit", "distill") and context:
        batch["context_pixel_values"] = torch.cat(context).float()
    if task == "distill":
        teacher = [example.teacher_input_ids for example in examples]
        batch["teacher_input_ids"], batch["teacher_attention_mask"] = _right_padded(teacher, pad_token_id)
    return batch


def _right_padded(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token id rows, right-padded with `pad_token_id` to the longest."""
    length = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask
