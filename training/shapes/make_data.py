"""Write the Shapes world's training data and tokenizer for `python -m training.train`.

    python -m training.shapes.make_data --output runs/shapes/data --scenes 20000 --seed 0

Writes `images/*.png`, `captions.jsonl` (image -> caption, for captioning and text-to-image), `vqa.jsonl` (LLaVA
conversations, every question about the scene) and `tokenizer/` (word-level over the world's vocabulary plus the Qwen
chat specials and `<image>`). Only training-split scenes: the held-out (colour, shape) pairs never appear.
"""

import argparse
import json
import random
from pathlib import Path

from modeling_harmon.atomic_files import atomic_directory
from .world import render, questions, sample_scene, vocabulary


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Every question `world.questions` has about a scene (5 to 9), in a random order, as one conversation: the image
# tokens dominate an image-to-text sequence, so each further question is cheap supervision (the first three recipe
# runs kept 3, and their VQA confused "what shape is on the left?" most). The random order ties no question to the
# first turn, where evaluation asks it alone.
QUESTIONS_PER_SCENE = None


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


def write_data(output: Path, scenes: int, seed: int) -> None:
    with atomic_directory(output) as staging:
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
    args = parser.parse_args(argv)
    write_data(args.output, args.scenes, args.seed)


if __name__ == "__main__":
    main()
