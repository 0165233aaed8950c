"""`model.init: pretrained` with `model.tokenizer` (the demo model's stage IV learns new words, issue 25): the
embedding table grows to the new tokenizer, every old row and the LLM head's tie stay, and a tokenizer that moves an
old token to another id is refused by name."""

import pytest
import torch

from modeling_harmon import HarmonForConditionalGeneration
from training.config import ConfigError
from training.model_init import load_model
from training.shapes.make_data import build_tokenizer

from .conftest import small_shapes_config


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory):
    """A small Harmon around the Shapes world's plain tokenizer (the 56 ids of stages I-III), saved."""
    tokenizer = build_tokenizer()
    folder = tmp_path_factory.mktemp("plain") / "model"
    torch.manual_seed(0)
    config = small_shapes_config(tokenizer)
    HarmonForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_larger_tokenizer_grows_the_table_and_keeps_every_old_row(plain_checkpoint, tmp_path):
    extended = build_tokenizer(extended=True)
    extended.save_pretrained(tmp_path / "tokenizer")
    before = HarmonForConditionalGeneration.from_pretrained(plain_checkpoint).get_input_embeddings().weight.detach()
    torch.manual_seed(3)
    model, tokenizer = load_model(
        {"init": "pretrained", "path": str(plain_checkpoint), "tokenizer": str(tmp_path / "tokenizer")}
    )
    embed = model.get_input_embeddings().weight
    assert len(tokenizer) == len(extended) > before.shape[0]
    assert embed.shape[0] == len(extended) == model.config.text_config.vocab_size
    assert torch.equal(embed[: before.shape[0]], before)
    assert model.lm_head.weight.data_ptr() == embed.data_ptr()  # still tied
    # The new rows start near the old rows' mean, not at zero or at random scale.
    mean = before.mean(0)
    assert (embed[before.shape[0] :] - mean).norm(dim=1).max() < before.std(0).norm()
    ids = tokenizer("make the circle blue", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and max(ids) >= before.shape[0]  # "make" is a new word
    logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape[-1] == len(extended) and torch.isfinite(logits).all()


def test_unk_rows_read_the_new_words_as_the_old_model_read_them(plain_checkpoint, tmp_path):
    """`new_token_init: unk`: a prompt with new words gives the logits it gave when they were unknown."""
    extended = build_tokenizer(extended=True)
    extended.save_pretrained(tmp_path / "tokenizer")
    old = HarmonForConditionalGeneration.from_pretrained(plain_checkpoint).eval()
    model, tokenizer = load_model(
        {
            "init": "pretrained",
            "path": str(plain_checkpoint),
            "tokenizer": str(tmp_path / "tokenizer"),
            "new_token_init": "unk",
        }
    )
    rows = old.get_input_embeddings().weight.shape[0]
    embed = model.get_input_embeddings().weight
    unk = build_tokenizer().unk_token_id
    assert torch.equal(embed[rows:], embed[unk].expand(embed.shape[0] - rows, -1))
    new_ids = tokenizer("make the circle blue", add_special_tokens=False)["input_ids"]
    old_ids = [index if index < rows else unk for index in new_ids]
    assert old_ids != new_ids
    with torch.no_grad():
        grown = model.eval()(input_ids=torch.tensor([new_ids])).logits[..., :rows]
        before = old(input_ids=torch.tensor([old_ids])).logits
    torch.testing.assert_close(grown, before)


def test_new_token_init_is_checked():
    from training.config import load_config

    with pytest.raises(ConfigError, match="model.new_token_init must be 'mean' or 'unk'"):
        load_config(None, ["model.new_token_init=zero"])
    with pytest.raises(ConfigError, match="lora.modules_to_save must be a list of module names"):
        load_config(None, ["lora.modules_to_save=embed_tokens"])


def test_the_same_tokenizer_changes_nothing(plain_checkpoint):
    model, _ = load_model({"init": "pretrained", "path": str(plain_checkpoint), "tokenizer": str(plain_checkpoint)})
    assert model.get_input_embeddings().weight.shape[0] == len(build_tokenizer())


def test_a_tokenizer_that_moves_old_ids_is_refused(plain_checkpoint, tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = list(build_tokenizer(extended=True).get_vocab())
    words[1], words[2] = words[2], words[1]  # two old words trade ids
    moved = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(
            models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>")
        ),
        unk_token="<unk>",
    )
    moved.save_pretrained(tmp_path / "moved")
    with pytest.raises(ConfigError, match="model.tokenizer must keep the checkpoint's tokens at their ids"):
        load_model({"init": "pretrained", "path": str(plain_checkpoint), "tokenizer": str(tmp_path / "moved")})
