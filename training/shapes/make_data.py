"""Write the Shapes world's training data and tokenizer for `python -m training.train`.

    python -m training.shapes.make_data --output runs/shapes/data --scenes 20000 --seed 0

Writes `images/*.png`, `captions.jsonl` (image -> caption, for captioning and text-to-image), `vqa.jsonl` (LLaVA
conversations, several questions per scene) and `tokenizer/` (word-level over the world's vocabulary plus the Qwen
chat specials and `<image>`). Only training-split scenes: the held-out (colour, shape) pairs never appear.
"""

import argparse
import json
import random
from pathlib import Path

from modeling_harmon.output_folders import OutputFolderError, replace_folder

from .world import questions, render, sample_scene, vocabulary


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Questions per scene, asked as one conversation in a random order. Two alternatives went through stages II and III
# of a fourth recipe run and did no better than this (VQA 0.86): every question of the scene as one conversation (5
# to 9 turns; VQA 0.86, with "is there ...?" at 0.72 against 0.92: a later turn can read its answer off an earlier
# question such as "where is the red square?"), and every question as a one-turn record of its own (VQA 0.83). That
# run also differed in stage I (two processes), so it is not a controlled comparison.
QUESTIONS_PER_SCENE = 3


def build_tokenizer():
    """Word-level tokenizer over the world's words (plus the chat role names and specials).

    A real BPE vocabulary would waste most of a tiny LLM's embedding table; words the world never uses map to
    `<unk>`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>"] + vocabulary() + ["user", "assistant", "system"]
    core = Tokenizer(models.WordLevel(vocab={word: index for index, word in enumerate(words)}, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()  # "Generate an image: ..." and "generate" are the same word
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    core.add_special_tokens(SPECIAL_TOKENS + ["<image>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>"},
    )


def write_data(output: Path, scenes: int, seed: int, overwrite: bool = False) -> None:
    """Write the data folder atomically; an existing one is replaced only if a harmon writer made it and `overwrite`
    is set."""
    with replace_folder(output, "training.shapes.make_data", overwrite) as staging:
        (staging / "images").mkdir()
        rng = random.Random(seed)
        with open(staging / "captions.jsonl", "w") as captions, open(staging / "vqa.jsonl", "w") as vqa:
            for index in range(scenes):
                scene = sample_scene(rng, "train")
                name = f"images/{index:06d}.png"
                render(scene, rng).save(staging / name)
                captions.write(json.dumps({"image": name, "text": scene.caption()}) + "\n")
                asked = questions(scene, rng)
                rng.shuffle(asked)
                turns = []
                for turn, (_, question, answer) in enumerate(asked[:QUESTIONS_PER_SCENE]):
                    turns.append({"from": "human", "value": ("<image>\n" if turn == 0 else "") + question})
                    turns.append({"from": "gpt", "value": answer})
                vqa.write(json.dumps({"image": name, "conversations": turns}) + "\n")
        build_tokenizer().save_pretrained(staging / "tokenizer")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace --output if a harmon writer made it")
    args = parser.parse_args(argv)
    try:
        write_data(args.output, args.scenes, args.seed, args.overwrite)
    except OutputFolderError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
