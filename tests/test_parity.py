"""Parity with the reference implementation on a recorded vector set (`HARMON_REF_VECTORS`, default tiny_a).

The set's checkpoint is converted with our converter; every input, setting and expected output is read from
the set's files, so the same tests run against any vector set of the same schema.
"""

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import DynamicCache

from modeling_harmon import HarmonSamplingSpeedups
from modeling_harmon.convert_harmon_weights_to_hf import convert_harmon_checkpoint
from modeling_harmon.modeling_harmon_diffusion import timestep_frequencies


REPO = Path(__file__).resolve().parents[1]
VECTOR_SET = Path(os.environ.get("HARMON_REF_VECTORS", REPO.parent / "shared" / "ref_vectors" / "tiny_a"))
RTOL = 1e-4

pytestmark = pytest.mark.skipif(not VECTOR_SET.is_dir(), reason=f"vector set {VECTOR_SET} not found")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str, rtol: float = RTOL) -> float:
    """Max abs error relative to the expected tensor's scale (max |expected|)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(expected.abs().max().item(), 1e-12)
    error = (actual - expected).abs().max().item() / scale
    print(f"parity {name}: {error:.3e}")
    assert error <= rtol, f"{name}: relative error {error:.3e} > {rtol:g}"
    return error


class Family:
    def __init__(self, name: str):
        self.meta = json.loads((VECTOR_SET / "vectors" / f"{name}.json").read_text())
        with safe_open(str(VECTOR_SET / "vectors" / f"{name}.safetensors"), "pt") as handle:
            self.tensors = {key: handle.get_tensor(key) for key in handle.keys()}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]


class Replay:
    """Returns recorded Gaussian draws in call order; each draw is cut to the rows the caller asks for.

    The reference draws the step noise for both CFG halves; our sampler only evolves the conditional half,
    which uses the first rows of each draw.
    """

    def __init__(self, draws: list[torch.Tensor]):
        self.draws, self.calls = draws, 0

    def __call__(self, shape):
        draw = self.draws[self.calls]
        self.calls += 1
        assert draw.shape[1:] == tuple(shape[1:]) and draw.shape[0] >= shape[0], (draw.shape, shape)
        return draw[: shape[0]].clone()


@pytest.fixture(scope="module")
def set_config():
    return json.loads((VECTOR_SET / "config.json").read_text())


@pytest.fixture(scope="module")
def model(tmp_path_factory, set_config):
    output = tmp_path_factory.mktemp("converted") / "harmon"
    converted = convert_harmon_checkpoint(
        VECTOR_SET / "harmon_tiny.pth",
        VECTOR_SET / "kl16_tiny.ckpt",
        VECTOR_SET / "llm_hf",
        VECTOR_SET / "llm_hf",
        VECTOR_SET / "config.json",
        output,
        verbose=False,
    )
    return converted.float().eval()


def test_converted_config_matches_set(model, set_config):
    mar, config = set_config["mar"], model.config
    assert config.encoder_hidden_size == mar["encoder_embed_dim"]
    assert config.decoder_hidden_size == mar["decoder_embed_dim"]
    assert config.buffer_size == mar["buffer_size"]
    assert config.image_grid == (mar["seq_h"], mar["seq_w"])
    assert config.num_sampling_steps == int(mar["num_sampling_steps"])
    assert config.tie_word_embeddings == set_config["llm"]["tie_word_embeddings"]
    assert config.image_token_id == set_config["tokenizer"]["len"]


def test_a_understanding(model):
    family = Family("a_understanding")
    input_ids = family["input_ids"]
    positions = (input_ids[0] == family.meta["image_token_id"]).nonzero().flatten()
    assert torch.equal(positions, family["image_token_positions"])
    inner = model.model
    with torch.no_grad():
        latents = inner.encode_images(family["image"])
        assert_close(latents, family["vae_latents"], "vae_latents")
        batch, rows, cols, dim = latents.shape
        encoded = inner.mar_encoder(
            latents.reshape(batch, rows * cols, dim), torch.zeros(batch, rows * cols, dtype=torch.bool), (rows, cols)
        )
        assert_close(encoded, family["mar_encoder_out"], "mar_encoder_out")
        assert_close(inner.get_image_features(family["image"]), family["z_enc"], "z_enc")
        output = model(input_ids=input_ids, pixel_values=family["image"], output_hidden_states=True)
    assert_close(output.hidden_states[0], family["inputs_embeds"], "inputs_embeds")
    assert_close(output.logits, family["logits"], "logits")

    kwargs = family.meta["generate_kwargs"]
    generated = model.generate(
        input_ids=input_ids,
        pixel_values=family["image"],
        max_new_tokens=kwargs["max_new_tokens"],
        do_sample=False,
        eos_token_id=kwargs["eos_token_id"],
        pad_token_id=kwargs["pad_token_id"],
    )
    assert generated[0, input_ids.shape[1] :].tolist() == family.meta["generate_ids"]

    # Greedy loop that ignores eos, with the KV cache, compared step by step.
    ids, cache = input_ids, None
    pixel_values = family["image"]
    for step, expected_token in enumerate(family.meta["greedy5_ignore_eos"]):
        with torch.no_grad():
            out = model(input_ids=ids, pixel_values=pixel_values, past_key_values=cache, use_cache=True)
        cache, pixel_values = out.past_key_values, None
        assert_close(out.logits[0, -1], family["greedy5_step_logits"][step], f"greedy step {step} logits")
        token = int(out.logits[0, -1].argmax())
        assert token == expected_token
        ids = torch.tensor([[token]])


def test_b_generation_internals(model):
    family = Family("b_gen_internals")
    inner = model.model
    input_ids, prompt_mask = family["input_ids"], family["attention_mask"].long()
    mask = family["mask"].bool()
    tokens = family["tokens"]
    grid = tuple(family.meta["grid"])
    captured = {}
    hook = inner.language_model.register_forward_hook(
        lambda m, a, out: captured.__setitem__("h", out.last_hidden_state)
    )
    try:
        with torch.no_grad():
            cache = DynamicCache(config=model.config.text_config)
            positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
            prefix = inner.run_language_model(inner.embed_tokens(input_ids), prompt_mask, positions, cache=cache)
            valid = prompt_mask.bool()
            # The reference prefills without a mask; pad positions differ by design, real tokens must not.
            assert_close(prefix.last_hidden_state[valid], family["prefix_last_hidden_state"][valid], "prefix hidden")
            encoded = inner.mar_encoder(tokens, mask, grid)
            assert_close(encoded, family["mar_encoder_out"], "mar_encoder_out")
            assert_close(inner._to_llm_order(inner.proj_in(encoded)), family["z_enc"], "z_enc")
            x_enc = inner.bridge(encoded, prompt_mask, cache=cache)
            length = family["llm_image_hidden"].shape[1]
            assert_close(captured["h"][:, -length:], family["llm_image_hidden"], "llm_image_hidden")
            assert cache.get_seq_length() == input_ids.shape[1], "the bridge must leave the prompt cache as it was"
            assert_close(x_enc, family["x_enc"], "x_enc")
            assert_close(inner.mar_decoder(x_enc, mask, grid), family["z"], "z")
            x_enc_nocache = inner.bridge(encoded, prompt_mask, prompt_embeds=inner.embed_tokens(input_ids))
            assert_close(x_enc_nocache, family["x_enc_nocache"], "x_enc_nocache")
            assert_close(inner.mar_decoder(x_enc_nocache, mask, grid), family["z_nocache"], "z_nocache")
    finally:
        hook.remove()


def test_c_diffusion_head(model, set_config):
    family = Family("c_diffusion_head")
    inner = model.model
    head, diffusion = inner.diffusion_head, inner.diffusion
    with torch.no_grad():
        assert_close(timestep_frequencies(family["t"]), family["t_freq"], "t_freq")
        assert_close(head.time_embed(family["t"]), family["t_emb"], "t_emb")
        assert_close(head(family["x_t"], family["t"], family["c"]), family["net_out"], "net_out")
        scale = float(re.search(r"cfg_scale=([0-9.]+)", family.meta["forward_with_cfg"]).group(1))
        half = family["cfg_x"].shape[0] // 2
        eps, variance = diffusion.predict(
            head, family["cfg_x"][:half], family["cfg_t"][:half], family["cfg_c"][:half], family["cfg_c"][half:], scale
        )
        channels = model.config.token_dim
        assert_close(eps, family["cfg_out"][:half, :channels], "cfg eps")
        assert_close(variance, family["cfg_out"][:half, channels:], "cfg variance")

    schedule = diffusion.sampling_schedule(int(set_config["mar"]["num_sampling_steps"]))
    assert schedule.timestep_map == family["gen_timestep_map"].tolist()
    assert schedule.timestep_map == set_config["mar"]["diffloss"]["gen_timestep_map"]
    for name in (
        "betas",
        "alphas_cumprod",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
    ):
        expected = family[f"gen_{name}"]
        assert expected.dtype == torch.float64
        assert_close(torch.from_numpy(getattr(schedule, name)), expected, f"gen_{name}", rtol=1e-12)

    for tag, sample in family.meta["samples"].items():
        temperature = float(re.search(r"temperature=([0-9.]+)", sample["call"]).group(1))
        cfg = float(re.search(r"cfg=([0-9.]+)", sample["call"]).group(1))
        z = family[f"sample_{tag}_z"]
        draws = [family[f"sample_{tag}_rng{call['idx']:03d}"] for call in sample["rng_calls"]]
        rows = z.shape[0] // 2 if cfg != 1.0 else z.shape[0]
        replay = Replay(draws)
        out = diffusion.sample(
            head,
            z[:rows],
            replay,
            unconditional=z[rows:] if cfg != 1.0 else None,
            guidance_scale=cfg,
            temperature=temperature,
        )
        assert replay.calls == len(draws), f"{tag}: {replay.calls} draws used, {len(draws)} recorded"
        assert_close(out, family[f"sample_{tag}_out"][:rows], f"sample {tag}")


def test_d_vae(model):
    family = Family("d_vae")
    inner = model.model
    with torch.no_grad():
        posterior = inner.vae.encode(family["image"]).latent_dist
        assert_close(posterior.parameters, family["moments"], "moments")
        assert_close(posterior.mean, family["mean"], "mean")
        assert_close(posterior.logvar, family["logvar"], "logvar")
        assert_close(inner.encode_images(family["image"]), family["encode"], "encode")
        decode_in = family["decode_in"].clone()
        decoded = inner.decode_latents(inner.tokens_to_latents(decode_in))
    assert torch.equal(decode_in, family["decode_in"]), "decoding must not modify its input"
    assert_close(decoded, family["decode_out"], "decode_out")


@pytest.mark.parametrize("speedups", ["all", "none"])
@pytest.mark.parametrize("name", ["e_sample_cfg1", "e_sample_cfg3"])
def test_e_full_sampling(model, name, speedups, monkeypatch):
    """Both with every sampling shortcut (the default) and with none (the reference's work)."""
    monkeypatch.setattr(
        model, "sampling_speedups", HarmonSamplingSpeedups() if speedups == "all" else HarmonSamplingSpeedups.none()
    )
    path = VECTOR_SET / "vectors" / f"{name}.json"
    if not path.exists():
        pytest.skip(f"{name} not in this vector set")
    family = Family(name)
    meta = family.meta
    cfg = float(meta["cfg"])
    rows = family["input_ids"].shape[0]
    batch = rows // 2 if cfg != 1.0 else rows
    input_ids, prompt_mask = family["input_ids"], family["attention_mask"].long()
    grid = tuple(meta["image_shape"])
    stride = model.config.vae_stride * model.config.patch_size
    draws = [family[f"rng{index:04d}"] for index in range(len(meta["rng_calls"]))]
    replay = Replay(draws)
    seen = []

    def record(step, num_iter, tokens, mask):
        seen.append((tokens.clone(), mask.clone()))

    output = model.generate_images(
        input_ids=input_ids[:batch],
        attention_mask=prompt_mask[:batch],
        negative_input_ids=input_ids[batch:] if cfg != 1.0 else None,
        negative_attention_mask=prompt_mask[batch:] if cfg != 1.0 else None,
        height=grid[0] * stride,
        width=grid[1] * stride,
        num_iter=meta["num_iter"],
        guidance_scale=cfg,
        cfg_schedule=meta["cfg_schedule"],
        temperature=meta["temperature"],
        orders=family["orders"][:batch],
        noise_fn=replay,
        callback=record,
    )
    assert replay.calls == len(draws)
    previous_mask = torch.ones(batch, grid[0] * grid[1], dtype=torch.bool)
    for step, info in enumerate(meta["steps"]):
        assert torch.equal(previous_mask, family[f"step{step}_mask"][:batch].bool()), f"step {step} mask"
        assert int(previous_mask[0].sum()) == info["n_masked_in"]
        tokens, mask = seen[step]
        predicted = previous_mask & ~mask
        expected = family[f"step{step}_sampled"][: int(predicted.sum())]
        assert_close(tokens[predicted], expected, f"step {step} sampled")
        previous_mask = mask
    final = output.latents.permute(0, 2, 3, 1)
    assert_close(final, family["final_tokens"][:batch], "final tokens")
    assert_close(output.images, family["image"], "image")
    as_uint8 = (127.5 * output.images + 128).clamp(0, 255).to(torch.uint8)
    assert (as_uint8.int() - family["image_uint8_bchw"].int()).abs().max() <= 1


def test_f_train_losses(model):
    family = Family("f_train_losses")
    meta = family.meta
    with torch.no_grad():
        result = model.text_to_image_loss(
            input_ids=family["t2i_input_ids"],
            attention_mask=family["t2i_attention_mask"],
            pixel_values=family["t2i_pixel_values"],
            mask=family["t2i_mask"].bool(),
            timesteps=family["t2i_t"],
            noise=family["t2i_noise"],
        )
    assert int(result.mask[0].sum()) == meta["t2i"]["num_masked"]
    assert int(result.mask[0].sum()) == math.ceil(result.mask.shape[1] * meta["t2i"]["mask_rate"])
    assert_close(result.target, family["t2i_gt_latents"], "gt_latents")
    assert_close(result.condition, family["t2i_z"], "t2i z")
    assert_close(result.mse, family["t2i_terms_mse"], "mse terms")
    assert_close(result.vb, family["t2i_terms_vb"], "vb terms")
    assert_close(result.loss, family["t2i_loss"][0], "t2i loss")

    input_ids = family["i2t_input_ids"].clone()
    input_ids[input_ids == meta["i2t"]["image_token_index"]] = model.config.image_token_id
    labels = family["i2t_labels"]
    with torch.no_grad():
        output = model(
            input_ids=input_ids,
            attention_mask=family["i2t_attention_mask"].long(),
            pixel_values=family["i2t_pixel_values"],
            labels=labels,
        )
    supervised = output.logits[:, :-1][labels[:, 1:] >= 0]
    assert_close(supervised, family["i2t_label_logits"], "i2t supervised logits")
    assert_close(output.loss, family["i2t_loss"][0], "i2t loss")
