"""FID and CLIPScore of image folders (`harmon_pipelines.evaluation.image_metrics`, computed by torchmetrics): values
checked against direct computations on tiny stand-in models built here, the refused inputs (each error names its
flag), and the `harmon eval fid|clipscore` runners. No downloads: the real Inception weights and CLIP are not used."""

import argparse
import importlib.util
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harmon_pipelines.cli import CommandError
from harmon_pipelines.evaluation import cli_image_metrics
from harmon_pipelines.evaluation.image_metrics import (
    INCEPTION_KEYS,
    INCEPTION_WEIGHTS_URL,
    TORCH_FIDELITY_INSTALL,
    ImageMetricError,
    _ProjectedFeatures,
    clip_score_folder,
    fid_folders,
    load_clip,
)


# Looked up, not imported: where torch-fidelity is installed, torchmetrics imports only after `image_metrics` has
# registered torch-fidelity's package without its torchvision-importing __init__.
if importlib.util.find_spec("torchmetrics") is None:
    pytest.skip("the `eval` extra (torchmetrics) is not installed", allow_module_level=True)

PROMPTS = ["a red circle", "a blue square", "two cats", "a yellow star", "an orange ring"]  # <= 16 tokens each
LONG_PROMPTS = [*PROMPTS, "a very long prompt " * 4]  # the last is over the tiny CLIP's 16-token context


class ChannelStats(torch.nn.Module):
    """A stand-in for the Inception: (B, 3, H, W) uint8 -> (B, 4) features, the channel means and the overall
    standard deviation (few features, so that 8 images give full-rank covariances)."""

    num_features = 4

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.double() / 255
        return torch.cat([pixels.mean(dim=(2, 3)), pixels.flatten(1).std(dim=1, keepdim=True)], dim=1)


def write_images(folder: Path, arrays) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, array in enumerate(arrays):
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(folder / f"{index:05d}.png")
    return folder


def noise(seed: int, n: int, low: int, high: int, size=(16, 16)) -> list:
    rng = np.random.default_rng(seed)
    return [rng.integers(low, high, (*size, 3)) for _ in range(n)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fid")
    return {
        "dark": write_images(root / "dark", noise(0, 8, 0, 160)),
        "light": write_images(root / "light", noise(1, 8, 60, 256)),
        "short": write_images(root / "short", noise(2, 5, 0, 160)),
        "one": write_images(root / "one", noise(3, 1, 0, 160)),
        "empty": write_images(root / "empty", []),
        "wider": write_images(root / "wider", noise(4, 7, 0, 160) + noise(5, 1, 0, 160, size=(16, 20))),
    }


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID of two feature sets, by symmetric square roots (another route than torchmetrics' eigenvalues of
    sigma_a @ sigma_b): |mu_a - mu_b|^2 + tr(sigma_a) + tr(sigma_b) - 2 tr sqrt(sigma_a^1/2 sigma_b sigma_a^1/2)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(sigma_a)
    root_a = vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ sigma_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * cross)


def features(folder: Path) -> np.ndarray:
    images = [np.asarray(Image.open(path).convert("RGB")) for path in sorted(folder.glob("*.png"))]
    return ChannelStats()(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)).numpy()


# --------------------------------------------------------------------------------------------------------- FID
def test_fid_matches_a_direct_computation_and_streams(folders):
    same = fid_folders(folders["dark"], folders["dark"], feature_extractor=ChannelStats())
    assert abs(same["value"]) < 1e-9
    result = fid_folders(folders["dark"], folders["light"], feature_extractor=ChannelStats(), batch_size=3)
    expected = frechet_distance(features(folders["dark"]), features(folders["light"]))
    assert expected > 0.01
    assert result["value"] == pytest.approx(expected, rel=1e-6)
    # Batches of 3 (streamed: sums of features and their products) give what one batch of all 8 gives.
    whole = fid_folders(folders["dark"], folders["light"], feature_extractor=ChannelStats(), batch_size=8)
    assert whole["value"] == pytest.approx(result["value"], rel=1e-9)
    assert (result["n"], result["n_reference"]) == (8, 8)
    assert result["settings"]["feature_extractor"] == {"name": "ChannelStats", "features": 4}
    assert result["settings"]["image_size"] == [16, 16] and result["library"]["torchmetrics"]
    json.dumps(result, allow_nan=False)


def test_fid_refuses_unequal_counts_unless_allowed(folders):
    with pytest.raises(ImageMetricError, match="--reference .* holds 5 images but --generated .* holds 8.*"
                       "--allow-count-mismatch"):  # fmt: skip
        fid_folders(folders["dark"], folders["short"], feature_extractor=ChannelStats())
    result = fid_folders(
        folders["dark"], folders["short"], feature_extractor=ChannelStats(), allow_count_mismatch=True
    )
    expected = frechet_distance(features(folders["dark"]), features(folders["short"]))
    assert (result["n"], result["n_reference"]) == (8, 5)
    assert result["value"] == pytest.approx(expected, rel=1e-6)


def test_fid_refuses_mixed_resolutions_unless_resized(folders):
    with pytest.raises(ImageMetricError, match=r"--reference .*'00007.png' is 16x20 .* --generated image .* is 16x16"):
        fid_folders(folders["dark"], folders["wider"], feature_extractor=ChannelStats())
    result = fid_folders(folders["dark"], folders["wider"], feature_extractor=ChannelStats(), resize=(16, 16))
    assert result["settings"]["resize"] == [16, 16] and np.isfinite(result["value"])


@pytest.mark.parametrize(
    "generated, reference, message",
    [
        ("one", "dark", r"--generated .* holds 1 image\(s\) .* at least 2"),
        ("dark", "empty", r"--reference .* holds 0 image\(s\)"),
        ("dark", "missing", r"--reference .*missing': no such folder"),
        ("dark", "dark/00000.png", r"--reference .* is a file; give a folder"),
    ],
)
def test_fid_refuses_bad_folders(folders, generated, reference, message):
    root = folders["dark"].parent
    with pytest.raises(ImageMetricError, match=message):
        fid_folders(root / generated, root / reference, feature_extractor=ChannelStats())


def test_fid_refuses_unreadable_images(folders, tmp_path):
    broken = write_images(tmp_path / "broken", noise(6, 8, 0, 160))
    (broken / "00003.png").write_bytes(b"not a png")
    with pytest.raises(ImageMetricError, match=r"--generated: '.*00003.png' is not an image PIL can read"):
        fid_folders(broken, folders["dark"], feature_extractor=ChannelStats())


def test_fid_weights_missing_or_wrong(folders, tmp_path):
    def fid(weights):
        return fid_folders(folders["dark"], folders["light"], weights=weights)

    with pytest.raises(ImageMetricError, match=f"--weights FILE is needed and works offline.*{INCEPTION_WEIGHTS_URL}"):
        fid(None)
    with pytest.raises(ImageMetricError, match=f"--weights .*nowhere.pth' does not exist.*{INCEPTION_WEIGHTS_URL}"):
        fid(tmp_path / "nowhere.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ImageMetricError, match="--weights .*junk.pth' is not a PyTorch weights file"):
        fid(tmp_path / "junk.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ImageMetricError, match="--weights .*other.pth' does not hold the FID Inception-v3 weights"):
        fid(tmp_path / "other.pth")


def test_fid_inception_needs_torch_fidelity_and_whole_weights(folders, tmp_path):
    """Weights that pass the quick check: without torch-fidelity, the error says how to install it; with it, the
    network's strict load refuses the partial file."""
    torch.save({key: torch.zeros(1) for key in INCEPTION_KEYS}, tmp_path / "partial.pth")
    installed = importlib.util.find_spec("torch_fidelity") is not None
    message = "does not fit the FID Inception-v3" if installed else re.escape(TORCH_FIDELITY_INSTALL)
    with pytest.raises(ImageMetricError, match=f"--weights.*{message}"):
        fid_folders(folders["dark"], folders["light"], weights=tmp_path / "partial.pth")


# --------------------------------------------------------------------------------------------------- CLIPScore
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP (byte-level vocabulary, no merges; 32x32 images; 16-token context) saved as a folder."""
    import transformers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(alphabet + [symbol + "</w>" for symbol in alphabet])}
    start, end = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": start, "<|endoftext|>": end})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": len(vocab),
            "max_position_embeddings": 16,
            "bos_token_id": start,
            "eos_token_id": end,
            "pad_token_id": end,
        },
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    # Random towers agree or disagree by chance; make them agree on the test images (a mean cosine > 0), so that
    # CLIPScore's floor at 0 cannot hide a wrong value.
    processor = transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    if raw_mean(model, processor, generated_images(len(LONG_PROMPTS)), LONG_PROMPTS) < 0:
        with torch.no_grad():
            model.text_projection.weight.neg_()
    assert raw_mean(model, processor, generated_images(len(LONG_PROMPTS)), LONG_PROMPTS) > 0
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)  # preprocessor_config.json, as CLIP folders on the Hub have
    return folder


def generated_images(n: int) -> list[np.ndarray]:
    """The images scored by the CLIPScore tests, (24, 20, 3) uint8: CLIP's processor resizes and crops them."""
    return [image.astype(np.uint8) for image in noise(7, n, 0, 256, size=(24, 20))]


def raw_mean(model, processor, images, prompts: list[str]) -> float:
    """Mean of 100 x the cosine of the projected image and prompt embeddings, computed here without torchmetrics;
    prompts are cut to the context by the tokenizer (which keeps the end token CLIP pools at)."""
    inputs = processor(text=prompts, images=list(images), return_tensors="pt", padding=True, truncation=True,
                       max_length=model.config.text_config.max_position_embeddings)  # fmt: skip
    with torch.no_grad():
        image_embeds = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    return float(100 * torch.nn.functional.cosine_similarity(image_embeds, text.pooler_output).mean())


def write_generated(folder: Path, prompts: list[str]) -> Path:
    """`generated_images` with `harmon generate`-style sidecars (STEM.json holding the prompt among other keys)."""
    folder.mkdir(parents=True)
    for index, (array, prompt) in enumerate(zip(generated_images(len(prompts)), prompts)):
        Image.fromarray(array).save(folder / f"{index:05d}_0.png")
        (folder / f"{index:05d}_0.json").write_text(json.dumps({"prompt": prompt, "seed": index, "image": 0}))
    return folder


def test_clipscore_equals_torchmetrics_and_a_direct_computation(clip_dir, tmp_path):
    from torchmetrics.functional.multimodal.clip_score import clip_score

    result = clip_score_folder(write_generated(tmp_path / "generated", LONG_PROMPTS), clip_dir, batch_size=2)
    model, processor = load_clip(clip_dir)
    images = generated_images(len(LONG_PROMPTS))
    expected = raw_mean(model, processor, images, LONG_PROMPTS)
    assert expected > 0 and result["value"] == pytest.approx(expected, rel=1e-5)
    assert result["n"] == 6 and result["settings"]["prompts_truncated"] == 1
    assert result["settings"]["prompt_source"] == "sidecars"
    assert result["settings"]["image_processor"] == "CLIPImageProcessorPil"
    json.dumps(result, allow_nan=False)
    # torchmetrics called directly, on all images at once, with the prompts that fit the context (it cannot cut
    # longer ones without losing CLIP's end token).
    short = clip_score_folder(write_generated(tmp_path / "short", PROMPTS), clip_dir, batch_size=2)
    tensors = [torch.from_numpy(image).permute(2, 0, 1) for image in images[: len(PROMPTS)]]
    with torch.no_grad(), warnings.catch_warnings():
        # The tokenizer gets max_length from the folder's config; torchmetrics asks for no truncation: the tokenizer
        # warns that it ignores max_length (nothing is cut: these prompts fit).
        warnings.filterwarnings("ignore", message="`max_length` is ignored")
        direct = clip_score(tensors, PROMPTS, model_name_or_path=lambda: (_ProjectedFeatures(model), processor))
    assert short["value"] == pytest.approx(float(direct), rel=1e-5)


def test_clipscore_reads_the_geneval_layout(clip_dir, tmp_path):
    sidecars = clip_score_folder(write_generated(tmp_path / "flat", PROMPTS[:2] * 2), clip_dir)
    for index, prompt in enumerate(PROMPTS[:2]):
        entry = tmp_path / "geneval" / f"{index:05d}"
        arrays = generated_images(4)[index::2]  # the flat folder's images of this prompt
        write_images(entry / "samples", arrays)
        (entry / "metadata.jsonl").write_text(json.dumps({"tag": "single_object", "prompt": prompt}) + "\n")
        write_images(entry, noise(8, 1, 0, 256))  # GenEval's grid image next to samples/: not scored
        (entry / "samples" / "00000.json").write_text(json.dumps({"prompt": "a sidecar: not a sample"}))
    other = tmp_path / "geneval" / "notes"  # not named by digits: GenEval's scorer skips it, so do we
    write_images(other / "samples", noise(9, 1, 0, 256))
    (other / "metadata.jsonl").write_text(json.dumps({"prompt": "skipped"}))
    result = clip_score_folder(tmp_path / "geneval", clip_dir)
    assert result["settings"]["prompt_source"] == "geneval" and result["n"] == 4
    assert result["value"] == pytest.approx(sidecars["value"], rel=1e-5)


def test_clipscore_refuses_missing_clip_and_prompts(clip_dir, tmp_path):
    folder = write_generated(tmp_path / "generated", PROMPTS[:2])
    with pytest.raises(ImageMetricError, match="--clip .*nowhere' does not exist.*hf download openai/clip"):
        clip_score_folder(folder, tmp_path / "nowhere")
    with pytest.raises(ImageMetricError, match="--clip FOLDER is needed"):
        clip_score_folder(folder)
    with pytest.raises(ImageMetricError, match="--clip .* is not a CLIP folder transformers can load"):
        clip_score_folder(folder, tmp_path)
    (folder / "00001_0.json").unlink()
    with pytest.raises(ImageMetricError, match="--images: '00001_0.png' has no '00001_0.json'"):
        clip_score_folder(folder, clip_dir)
    (folder / "00001_0.json").write_text(json.dumps({"seed": 1}))
    with pytest.raises(ImageMetricError, match=r"--images: '.*00001_0.json' has no \"prompt\" string"):
        clip_score_folder(folder, clip_dir)
    with pytest.raises(ImageMetricError, match="--images .* holds no images .* with prompts"):
        clip_score_folder(write_images(tmp_path / "none", []), clip_dir)


# --------------------------------------------------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    """`harmon eval` with the two metrics mounted as subcommands, as `harmon_pipelines.cli_eval` does."""
    evaluation = argparse.ArgumentParser(prog="harmon eval")
    metrics = evaluation.add_subparsers(dest="benchmark", required=True)
    cli_image_metrics.add_fid_arguments(metrics.add_parser("fid"))
    cli_image_metrics.add_clipscore_arguments(metrics.add_parser("clipscore"))
    return evaluation


def test_cli_clipscore_writes_json_and_fid_errors_are_command_errors(clip_dir, folders, tmp_path, capsys):
    folder = write_generated(tmp_path / "generated", PROMPTS)
    out = tmp_path / "results" / "clipscore.json"
    args = parser().parse_args(["clipscore", "--images", str(folder), "--clip", str(clip_dir), "--json", str(out)])
    args.run(args)
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["metric"] == "clipscore" and result["n"] == 5
    assert capsys.readouterr().out == f"CLIPScore {result['value']:.4f} (5 images)\n"

    args = parser().parse_args(["fid", "--generated", str(folders["dark"]), "--reference", str(folders["light"])])
    with pytest.raises(CommandError, match="--weights FILE is needed"):
        args.run(args)
    args = parser().parse_args(["fid", "--generated", str(folders["dark"]), "--reference", str(folders["short"]),
                                "--weights", str(tmp_path / "w.pth")])  # fmt: skip
    with pytest.raises(CommandError, match="--reference .* holds 5 images"):
        args.run(args)
    args = parser().parse_args(["clipscore", "--images", str(folder), "--clip", str(clip_dir), "--device", "nonsense"])
    with pytest.raises(CommandError, match="--device 'nonsense'"):
        args.run(args)
    with pytest.raises(CommandError, match="--json .* is a folder"):
        args = parser().parse_args(
            ["clipscore", "--images", str(folder), "--clip", str(clip_dir), "--json", str(tmp_path)]
        )
        args.run(args)
