"""The web demo (`harmon_pipelines.app`, `harmon demo`, `harmon space export`), served on localhost with the tiny
model and driven through `gradio_client` as a program would use it."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


gr = pytest.importorskip("gradio", reason="the web demo needs the demo extra: pip install -e '.[demo]'")
gradio_client = pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from gradio_client.utils import QueueError  # noqa: E402

from harmon_pipelines import app as demo_app  # noqa: E402
from harmon_pipelines.cli import main  # noqa: E402
from harmon_pipelines.default_model import load_model_and_tokenizer  # noqa: E402
from modeling_harmon.demo import build_random_model  # noqa: E402


STEPS, HEAD_STEPS = 4, 10  # a few MAR iterations keep the tiny model's drawings well under a second


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_dir):
    """(HarmonDemo, url) of the tiny model, loaded from its folder as `harmon demo --model` loads it."""
    model, tokenizer = load_model_and_tokenizer(str(tiny_dir))
    demo = demo_app.HarmonDemo(model, tokenizer, source=str(tiny_dir))
    _, url, _ = demo_app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    assert url.startswith("http://127.0.0.1:")  # localhost unless told otherwise
    yield demo, url
    demo.blocks.close()


@pytest.fixture(scope="module")
def client(served):
    return Client(served[1], verbose=False)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A 32 px Shapes-like scene: a red circle on the left, a blue square on the right."""
    image = Image.new("RGB", (32, 32), (235, 235, 235))
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    draw.ellipse((3, 11, 13, 21), fill=(215, 40, 40))
    draw.rectangle((19, 11, 29, 21), fill=(40, 70, 215))
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    image.save(path)
    return path


def generate_args(prompt="a red circle", seed=0, num_images=1, **changes) -> dict:
    args = {
        "prompt": prompt,
        "negative_prompt": "",
        "seed": seed,
        "random_seed": False,
        "num_images": num_images,
        "height": 32,
        "width": 32,
        "preset": demo_app.DEFAULTS_CHOICE,
        "steps": STEPS,
        "head_steps": HEAD_STEPS,
        "guidance_scale": 3.0,
        "cfg_schedule": "constant",
        "temperature": 1.0,
        "api_name": "/generate",
    }
    args.update(changes)
    return args


def expected_images(demo, prompt: str, seed: int, num_images: int) -> list[np.ndarray]:
    """What `generate_images` draws with the settings of `generate_args`, as uint8 pixels (diffusers' conversion)."""
    with demo.lock:
        images = demo.model.generate_images(
            prompt,
            tokenizer=demo.tokenizer,
            num_images_per_prompt=num_images,
            generator=[torch.Generator().manual_seed(seed + k) for k in range(num_images)],
            height=32,
            width=32,
            num_iter=STEPS,
            num_sampling_steps=HEAD_STEPS,
            guidance_scale=3.0,
            cfg_schedule="constant",
            temperature=1.0,
        ).images
    array = (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return list((array * 255).round().astype("uint8"))


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def message_text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


# ------------------------------------------------------------------------------------------------------- tabs
def test_generate_equals_generate_images(served, client):
    demo, _ = served
    live, gallery, files, status, seed = client.predict(**generate_args("a red circle", seed=5, num_images=2))
    assert seed == 5 and "Drew 2 image(s)" in status
    expected = expected_images(demo, "a red circle", 5, 2)
    assert [pixels(path).shape for path in files] == [(32, 32, 3)] * 2
    for path, want in zip(files, expected):
        np.testing.assert_array_equal(pixels(path), want)  # the downloads hold the model's own pixels
    shown = pixels(gallery[0]["image"])
    assert shown.shape == (256, 256, 3)  # enlarged 8x for display, by nearest neighbour: no blur
    np.testing.assert_array_equal(shown[::8, ::8], expected[0])
    np.testing.assert_array_equal(shown, np.kron(expected[0], np.ones((8, 8, 1), dtype=np.uint8)))
    np.testing.assert_array_equal(pixels(live), shown)  # the live view ends on the finished image
    with Image.open(files[1]) as image:
        record = json.loads(image.text["harmon"])
    assert record["seed"] == 6 and record["prompt"] == "a red circle"


def test_generate_shows_and_records_the_models_restatement(served, client, monkeypatch):
    """A model that restates prompts (prompt_mode "describe"): the status line says what was drawn, the files record it."""
    demo, _ = served
    monkeypatch.setitem(demo.model.generation_config.image_generation, "prompt_mode", "describe")
    monkeypatch.setattr(demo.model, "describe_prompts", lambda prompt, **_: [f"{text} again" for text in prompt])
    _, _, files, status, _ = client.predict(**generate_args("a red circle", seed=5, num_images=1))
    assert 'The model read the prompt as "a red circle again" and drew that.' in status
    with Image.open(files[0]) as image:
        record = json.loads(image.text["harmon"])
    assert record["prompt"] == "a red circle" and record["description"] == "a red circle again"
    monkeypatch.setitem(demo.model.generation_config.image_generation, "prompt_mode", "direct")
    np.testing.assert_array_equal(pixels(files[0]), expected_images(demo, "a red circle again", 5, 1)[0])


def test_ask_answers_as_harmon_ask(client, scene, tiny_dir, capsys):
    question = "what color is the circle?"
    chat, box = client.predict(
        image=handle_file(str(scene)),
        question=question,
        history=[],
        use_history=False,
        max_new_tokens=12,
        api_name="/ask",
    )
    assert box == "" and [message["role"] for message in chat] == ["user", "assistant"]
    assert message_text(chat[0]) == question
    capsys.readouterr()
    assert main(["ask", str(scene), question, "--model", str(tiny_dir), "--max-new-tokens", "12"]) == 0
    assert message_text(chat[1]) == capsys.readouterr().out.strip()


def test_ask_streams_the_answer(served, scene):
    """The answer comes token by token: the generator yields a growing answer before the last one."""
    demo, _ = served
    with Image.open(scene) as image:
        updates = [
            message_text(chat[-1])
            for chat, _ in demo.ask(image.convert("RGB"), "what shape is on the right?", [], False, 6)
        ]
    assert len(updates) >= 3 and updates[0] == ""


def test_inpaint_and_outpaint_keep_the_canvas_size(client, scene, tmp_path):
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    mask.save(tmp_path / "mask.png")
    common = {
        "painted": None,
        "prompt": "a green triangle",
        "seed": 1,
        "random_seed": False,
        "steps": 0,
        "guidance_scale": 3.0,
        "temperature": 1.0,
        "paste_back": True,
        "api_name": "/inpaint",
    }
    shown, path, status, _ = client.predict(
        picture=handle_file(str(scene)),
        mode="Inpaint (paint the mask)",
        **{**common, "steps": STEPS},
        mask=handle_file(str(tmp_path / "mask.png")),
        left=0,
        right=0,
        top=0,
        bottom=0,
    )
    assert pixels(path).shape == (32, 32, 3) and pixels(shown).shape == (256, 256, 3)
    assert "redrew 32 of 64 tokens" in status
    np.testing.assert_array_equal(pixels(path)[:, 16:], pixels(scene)[:, 16:])  # pasted back outside the mask
    shown, path, status, _ = client.predict(
        picture=handle_file(str(scene)),
        mode="Outpaint (add borders)",
        mask=None,
        left=0,
        right=8,
        top=4,
        bottom=0,
        **common,
    )
    assert pixels(path).shape == (36, 40, 3) and "Outpainting" in status
    np.testing.assert_array_equal(pixels(path)[4:, :32], pixels(scene))


def test_painted_mask_maps_to_the_picture(served):
    """The editor shows the picture enlarged; a stroke on the enlarged picture masks the pixels it covers."""
    demo, _ = served
    picture = Image.new("RGB", (32, 32))
    layer = np.zeros((256, 256, 4), dtype=np.uint8)
    layer[10:12, 100:101, 3] = 255  # screen pixels of picture pixel (row 1, column 12)
    mask = np.asarray(demo._painted_mask(picture, {"background": None, "layers": [layer], "composite": None}))
    assert mask.shape == (32, 32) and mask.sum() == 255 and mask[1, 12] == 255
    assert demo._painted_mask(picture, {"layers": [np.zeros((256, 256, 4), dtype=np.uint8)]}) is None
    with pytest.raises(gr.Error, match="does not match the picture"):
        demo._painted_mask(picture, {"layers": [np.full((100, 100, 4), 255, dtype=np.uint8)]})


def test_edit_returns_the_asked_size_and_continues(client, scene):
    common = {
        "instruction": "make the circle blue",
        "image_guidance_scale": 1.5,
        "guidance_scale": 2.0,
        "random_seed": False,
        "steps": STEPS,
        "temperature": 1.0,
        "api_name": "/edit",
    }
    shown, path, status, seed = client.predict(picture=handle_file(str(scene)), seed=3, height=32, width=48, **common)
    assert pixels(path).shape == (32, 48, 3) and seed == 3 and "Edited" in status
    # "Continue editing the result": the result, fed back as the picture of the next turn.
    _, second, _, _ = client.predict(picture=handle_file(path), seed=4, height=32, width=32, **common)
    assert pixels(second).shape == (32, 32, 3)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty prompt", "Prompt must not be empty"),
        ("huge size", "greater than maximum value 128"),
        ("size off the token grid", "Height must be a positive multiple of 4"),
        ("non-image upload", "'notes.txt' is not an image that can be read"),
        ("mask of another size", "Mask is 16x16 px but the picture is 32x32 px"),
        ("empty mask", "paint over the part to redraw"),
        ("too many images", "greater than maximum value 4"),
    ],
)
def test_bad_input_is_a_visible_error(client, scene, tmp_path, case, message):
    (tmp_path / "notes.txt").write_text("not a picture")
    Image.new("L", (16, 16), 255).save(tmp_path / "mask16.png")
    inpaint = {
        "picture": handle_file(str(scene)),
        "mode": "Inpaint (paint the mask)",
        "painted": None,
        "mask": None,
        "left": 0,
        "right": 0,
        "top": 0,
        "bottom": 0,
        "prompt": "a circle",
        "seed": 0,
        "random_seed": False,
        "steps": 0,
        "guidance_scale": 3.0,
        "temperature": 1.0,
        "paste_back": True,
        "api_name": "/inpaint",
    }
    calls = {
        "empty prompt": generate_args("   "),
        "huge size": generate_args(height=100_000),
        "size off the token grid": generate_args(height=30),
        "non-image upload": {
            "image": handle_file(str(tmp_path / "notes.txt")),
            "question": "what is it?",
            "history": [],
            "use_history": False,
            "max_new_tokens": 4,
            "api_name": "/ask",
        },
        "mask of another size": {**inpaint, "mask": handle_file(str(tmp_path / "mask16.png"))},
        "empty mask": inpaint,
        "too many images": generate_args(num_images=5),
    }
    with pytest.raises(AppError) as raised:
        client.predict(**calls[case])
    text = str(raised.value)
    assert message in text and "Traceback" not in text and 'File "' not in text


def test_two_clients_get_their_own_results(served):
    demo, url = served
    clients = [Client(url, verbose=False) for _ in range(2)]
    jobs = [
        clients[0].submit(**generate_args("a red circle", seed=11)),
        clients[1].submit(**generate_args("a blue square", seed=22)),
    ]
    results = [job.result(timeout=120) for job in jobs]
    for (_, _, files, _, seed), prompt, want_seed in zip(results, ("a red circle", "a blue square"), (11, 22)):
        assert seed == want_seed
        np.testing.assert_array_equal(pixels(files[0]), expected_images(demo, prompt, want_seed, 1)[0])


def test_stop_ends_after_the_current_iteration(served):
    """Stop (the button's handler) interrupts the MAR loop; the page gets the tokens drawn so far."""
    demo, _ = served

    class Request:
        session_hash = "stop-test"

    request = Request()
    demo._arm(request)
    updates = demo.generate(
        "a red circle", "", 0, False, 1, 32, 32, None, 32, HEAD_STEPS, 3.0, "constant", 1.0, request
    )
    frames = 0
    for update in updates:
        if update[3].startswith("MAR iteration"):
            frames += 1
            demo._stop(request)  # pressed while the first iterations run
    assert "Stopped after MAR iteration" in update[3] and frames < 32
    assert "stop-test" not in demo._runs and "stop-test" not in demo._pending_stops  # the next one runs in full
    demo._stop(request)  # pressed while the request waits in the queue: it stops before drawing much
    updates = list(
        demo.generate("a red circle", "", 0, False, 1, 32, 32, None, 32, HEAD_STEPS, 3.0, "constant", 1.0, request)
    )
    assert "Stopped after MAR iteration 1:" in updates[-1][3]
    demo._stop(request)  # pressed while nothing ran, then Generate clicked: the page's click forgets it
    demo._arm(request)
    updates = list(
        demo.generate("a red circle", "", 0, False, 1, 32, 32, None, 4, HEAD_STEPS, 3.0, "constant", 1.0, request)
    )
    assert updates[-1][3].startswith("Drew 1 image")


def test_queue_refuses_when_full(served, scene):
    """One worker, a bounded queue: past `max_size` waiting requests, a request is refused with a message."""
    demo, url = served
    queue = demo.blocks._queue
    size = queue.max_size
    queue.max_size = 1
    try:
        clients = [Client(url, verbose=False) for _ in range(3)]
        slow = generate_args(steps=32)
        deadline = time.monotonic() + 60
        first = clients[0].submit(**slow)
        while not demo.lock.locked() and time.monotonic() < deadline:  # the first is drawing
            time.sleep(0.02)
        second = clients[1].submit(**slow)
        while len(queue) < 1 and time.monotonic() < deadline:  # the second waits
            time.sleep(0.02)
        assert demo.lock.locked() and len(queue) == 1
        with pytest.raises(QueueError, match="Queue is full"):
            clients[2].predict(**generate_args())
        assert first.result(timeout=120)[3].startswith("Drew") and second.result(timeout=120)[3].startswith("Drew")
    finally:
        queue.max_size = size


# ------------------------------------------------------------------------------------------ model and layout
def test_tabs_the_model_was_not_trained_for_say_why():
    model, tokenizer = build_random_model(seed=0)
    model.config.trained_tasks = ["text2image"]
    demo = demo_app.HarmonDemo(model, tokenizer)
    texts = [block.value for block in demo.blocks.blocks.values() if isinstance(block, gr.Markdown)]
    assert any("not trained for image understanding" in text for text in texts)
    assert any("not trained for editing" in text for text in texts)
    assert not any("not trained for text-to-image" in text for text in texts)
    assert demo.supports("generate") and demo.supports("inpaint") and not demo.supports("ask")
    with pytest.raises(gr.Error, match="not trained for editing"):  # the API refuses what the page says is off
        next(demo.edit(Image.new("RGB", (32, 32)), "make it blue", 1.5, 2.0, 0, False, 32, 32, 4, 1.0))
    model.config.trained_tasks = None
    assert demo_app.HarmonDemo(model, tokenizer).supports("edit")  # unknown: every tab


def test_defaults_and_presets_fill_the_advanced_fold(served):
    demo, _ = served
    settings = demo.model.image_generation_settings().to_dict()
    assert demo._preset_values(demo_app.DEFAULTS_CHOICE) == (
        settings["num_iter"],
        settings["num_sampling_steps"],
        settings["guidance_scale"],
        settings["cfg_schedule"],
        settings["temperature"],
    )


def test_the_page_fetches_nothing_from_the_internet(served):
    """Analytics off and system fonts: the theme's CSS names no font file or remote stylesheet."""
    demo, url = served
    assert demo.blocks.analytics_enabled is False
    theme = demo_app.theme()
    css = theme._get_theme_css() + demo_app.CSS
    assert theme._stylesheets == [] and "@font-face" not in css  # no font file, local or remote
    assert not re.search(r"url\((?![\"']?data:)", css)  # only inline data: images
    assert os.environ.get("GRADIO_ANALYTICS_ENABLED") == "False"


# ------------------------------------------------------------------------------------------------- commands
def test_harmon_demo_binds_to_localhost(tiny_dir, monkeypatch, capsys):
    launched = {}
    monkeypatch.setattr(demo_app, "launch", lambda demo, **options: launched.update(options, demo=demo))
    assert main(["demo", "--model", str(tiny_dir), "--port", "7861"]) == 0
    assert launched["host"] == "127.0.0.1" and launched["port"] == 7861 and launched["share"] is False
    assert launched["demo"].supports("ask")
    assert main(["demo", "--model", str(tiny_dir), "--share", "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert "--share needs the network" in err and "other machines" in err
    assert main(["demo", "--port", "99999"]) == 2
    assert main(["demo", "--model", str(tiny_dir / "missing")]) == 2
    assert "harmon demo: error: --model" in capsys.readouterr().err


def test_space_export_writes_a_space_that_starts(tiny_dir, tmp_path, capsys):
    space = tmp_path / "space"
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    assert main(["space", "export", str(tmp_path / "theirs"), "--model", "org/harmon"]) == 2
    assert "never replaced" in capsys.readouterr().err
    assert main(["space", "export", str(space), "--model", "not a repo id!"]) == 2
    assert main(["space", "export", str(space), "--model", str(tiny_dir)]) == 0
    assert main(["space", "export", str(space), "--model", str(tiny_dir)]) == 2  # ours: only with --overwrite
    assert main(["space", "export", str(space), "--model", str(tiny_dir), "--overwrite"]) == 0
    readme = (space / "README.md").read_text(encoding="utf-8")
    front = readme.split("---")[1]
    assert "\nsdk: gradio\n" in front and f"sdk_version: {gr.__version__}" in front
    requirements = (space / "requirements.txt").read_text(encoding="utf-8")
    assert "torch" in requirements and "transformers" in requirements
    assert (space / "modeling_harmon" / "modeling_harmon.py").is_file()
    assert (space / "harmon_pipelines" / "app.py").read_bytes() == Path(demo_app.__file__).read_bytes()

    # The folder starts on its own: its vendored code (not this checkout's) loads the model and serves the page.
    port = free_port()
    script = (
        "import os, sys, urllib.request\n"
        "import app\n"
        "import harmon_pipelines.app as vendored\n"
        "assert vendored.__file__.startswith(os.getcwd()), vendored.__file__\n"
        f"_, url, _ = vendored.launch(app.demo, port={port}, prevent_thread_lock=True, quiet=True)\n"
        "page = urllib.request.urlopen(url, timeout=30).read().decode()\n"
        "assert 'Harmon' in page\n"
        "print('served', url)\n"
        "app.demo.blocks.close()\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=space, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"served http://127.0.0.1:{port}/" in done.stdout
    # Gradio writes a .pyi stub beside any module that subclasses one of its components; the app subclasses none.
    assert not (space / "harmon_pipelines" / "app.pyi").exists()
    assert not Path(demo_app.__file__).with_suffix(".pyi").exists()
