"""Hostile and careless uses of `training.train` (security audit, issue 19): every mistake is one line with exit
status 2 before the model loads, a non-empty run folder needs --resume or --overwrite and loses only harmon's own
checkpoints, `final/` is swapped in whole, a malicious pickle in a checkpoint runs no code, and skipped samples are
reported."""

import json
import pickle
import shutil
from pathlib import Path

import pytest

from modeling_harmon.output_folders import MARKER, is_marked

from .test_hostile_folders import REPO, hidden_siblings, our_folder, snapshot, users_folder


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    """Six captioned 32 px images and one record whose image is missing (a sample training must skip)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("captions")
    rows = []
    for index in range(6):
        Image.fromarray(np.full((32, 32, 3), 40 * index, dtype=np.uint8)).save(root / f"{index}.png")
        rows.append({"image": f"{index}.png", "text": f"a square number {index}"})
    rows.append({"image": "missing.png", "text": "a square nobody drew"})
    (root / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root / "captions.jsonl"


def train_arguments(model, data, output, *extra):
    return [
        "--config",
        str(REPO / "training" / "configs" / "decoder_only.yaml"),
        "--model",
        str(model),
        "--output-dir",
        str(output),
        "--data",
        f"t2i=jsonl:{data}",
        "--set",
        "image_size=32",
        "--set",
        "data.micro_batch_size={text: 2, image2text: 2, text2image: 2}",
        "--set",
        "train.global_batch_size=null",
        "--set",
        "train.cycles_per_step=1",
        "--set",
        "train.save_steps=2",
        "--set",
        "optim.warmup=0",
        "--set",
        "train.bf16=false",
        "--max-steps",
        "2",
        *extra,
    ]


def run_training(argv, capsys):
    from training.train import main

    status = main(argv)
    return status, capsys.readouterr().err


def test_training_refuses_before_loading_the_model(tmp_path, capsys, captions):
    """Each mistake is reported before the (here missing) model would load, in one line."""
    missing_model = tmp_path / "no-model"
    users = users_folder(tmp_path / "users")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    before = snapshot(tmp_path)
    cases = [
        (train_arguments(missing_model, captions, users), "--resume to continue"),
        (train_arguments(missing_model, captions, users, "--resume", "--overwrite"), "not both"),
        (train_arguments(missing_model, captions, a_file / "run"), "not a writable folder"),
        (train_arguments(missing_model, captions, a_file), "not a folder"),
        (train_arguments(missing_model, tmp_path / "nope.jsonl", tmp_path / "run"), "no such file or folder"),
        (train_arguments(missing_model, captions, tmp_path / "run", "--set", "train.max_steps=[1"), "not valid YAML"),
        (train_arguments(missing_model, captions, tmp_path / "run", "--set", "data.ratio={a: 1"), "not valid YAML"),
    ]
    for argv, words in cases:
        status, err = run_training(argv, capsys)
        assert status == 2 and err.count("\n") == 1 and words in err, (argv[-3:], err)
    assert snapshot(tmp_path) == before


def test_overwrite_removes_harmons_checkpoints_only_and_skips_are_reported(tmp_path, capsys, tiny_dir, captions):
    output = tmp_path / "run"
    assert run_training(train_arguments(tiny_dir, captions, output), capsys)[0] == 0
    assert is_marked(output) and is_marked(output / "checkpoint-2") and is_marked(output / "final")
    skips = json.loads((output / "data_skips.json").read_text())
    assert skips["skipped"].get("unreadable_image", 0) >= 1 and skips["total"] == sum(skips["skipped"].values())
    # A longer earlier run's checkpoint, which a later --resume must never pick up, and the user's notes.
    shutil.copytree(output / "checkpoint-2", output / "checkpoint-9")
    (output / "notes.txt").write_text("mine")
    status, err = run_training(train_arguments(tiny_dir, captions, output), capsys)
    assert status == 2 and "--overwrite" in err and (output / "checkpoint-9").is_dir()
    status, err = run_training(train_arguments(tiny_dir, captions, output, "--overwrite"), capsys)
    assert status == 0 and "samples skipped as unusable" in err
    assert sorted(p.name for p in output.iterdir()) == sorted(
        [MARKER, "checkpoint-2", "final", "notes.txt", "data_skips.json"]
    )
    (output / "checkpoint-7").mkdir()  # not harmon's: --overwrite must not remove it
    status, err = run_training(train_arguments(tiny_dir, captions, output, "--overwrite"), capsys)
    assert status == 2 and "checkpoint-7" in err and (output / "checkpoint-2").is_dir()


def test_final_folder_is_swapped_in_whole(tmp_path):
    """A kill (here an exception) while `final/` is written leaves the previous final model, not weights without
    their tokenizer."""
    from types import SimpleNamespace

    from training.train import save_final

    final = our_folder(tmp_path / "run" / "final", "previous final model")

    class Trainer:
        args = SimpleNamespace(should_save=True)

        def save_model(self, folder):
            Path(folder, "model.safetensors").write_bytes(b"weights")
            raise KeyboardInterrupt  # before the tokenizer and processor

    with pytest.raises(KeyboardInterrupt):
        save_final(Trainer(), final, [], {"lora": {"enabled": False}}, None, None)
    assert (final / "weights.txt").read_text() == "previous final model" and hidden_siblings(final) == []


class _Sentinel:
    """Unpickling this would create a file: a stand-in for code a malicious checkpoint would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_malicious_pickle_in_a_checkpoint_runs_no_code_on_resume(tmp_path, capsys, tiny_dir, captions):
    output = tmp_path / "run"
    arguments = train_arguments(tiny_dir, captions, output, "--set", "train.save_steps=1")
    assert run_training(arguments, capsys)[0] == 0
    sentinel = tmp_path / "pwned"
    checkpoint = output / "checkpoint-1"
    for name in [path.name for path in checkpoint.glob("*.pt*")]:  # optimizer.pt, scheduler.pt, rng_state.pth
        (checkpoint / name).write_bytes(pickle.dumps(_Sentinel(sentinel)))
    shutil.rmtree(output / "checkpoint-2")  # resume from the tampered one
    arguments[arguments.index("--max-steps") + 1] = "2"
    status, err = run_training([*arguments, "--resume"], capsys)
    assert not sentinel.exists()
    last = err.strip().splitlines()[-1]  # after the model loaded (its progress lines come first)
    assert status == 2 and last.startswith("error: --resume") and "checkpoint-1" in last, err
    assert "weights_only=False" not in err and "Traceback" not in err


def test_a_checkpoint_save_killed_midway_leaves_the_last_one_whole_and_resume_cleans_up(
    tmp_path, capsys, tiny_dir, captions, monkeypatch
):
    import training.trainer as trainer_module

    output = tmp_path / "run"
    arguments = train_arguments(tiny_dir, captions, output, "--set", "train.save_steps=1")
    swap = trainer_module.swap_in_folder

    def killed_at_step_2(staging, path):
        if Path(path).name == "checkpoint-2":
            raise KeyboardInterrupt  # stands in for kill -9 with the checkpoint complete in staging
        swap(staging, path)

    monkeypatch.setattr(trainer_module, "swap_in_folder", killed_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_training(arguments, capsys)
    monkeypatch.setattr(trainer_module, "swap_in_folder", swap)
    assert is_marked(output / "checkpoint-1") and not (output / "checkpoint-2").exists()
    assert len(hidden_siblings(output / "checkpoint-2")) == 1  # the staged copy, left by the "killed" run
    status, err = run_training([*arguments, "--resume"], capsys)
    assert status == 0, err
    assert is_marked(output / "checkpoint-2") and is_marked(output / "final")
    assert [path.name for path in output.iterdir() if path.name.startswith(".") and path.name != MARKER] == []
