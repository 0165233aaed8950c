"""The web demo in a real browser: headless Chromium (Debian's `chromium` package, which `.ci/run` installs) driven
by Playwright (the Python package; its own browser download does not work offline, so it runs the system Chromium).

The page of the embedded Shapes model is loaded, a prompt typed, Generate clicked; the live reveal must show frames
before the finished image, whose pixels must not be blank; "Send to Ask" and a question must give the answer the
model gives for that picture. No request may leave the server's origin (no analytics, fonts or assets from the
internet). Screenshots go to a temporary folder the test prints. Without Chromium or Playwright the test is skipped,
except under CI=true, where that is a failure.
"""

import io
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("HARMON_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def missing(reason: str):
    """A missing browser or package: a failure on CI (which installs them), a skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser_tools():
    try:
        import gradio  # noqa: F401
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        missing(f"the browser test needs the demo extra (pip install -e '.[demo]'): {error}")
    executable = chromium_path()
    if executable is None:
        missing("no Chromium at /usr/bin/chromium (apt-get install chromium) or HARMON_CHROMIUM")
    return sync_playwright, executable


@pytest.fixture(scope="module")
def served(browser_tools):
    """The demo of the embedded Shapes model on a free localhost port."""
    from harmon_pipelines import app as demo_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = demo_app.HarmonDemo.load(None, device="cpu")
    _, url, _ = demo_app.launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    yield demo, url
    demo.blocks.close()


def test_page_generates_and_answers_in_chromium(browser_tools, served, tmp_path_factory):
    sync_playwright, executable = browser_tools
    demo, url = served
    shots = tmp_path_factory.mktemp("demo-screenshots")
    print(f"screenshots: {shots}")
    outside = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.on(
                "request",
                lambda request: (
                    None if request.url.startswith((url, "data:", "blob:")) else outside.append(request.url)
                ),
            )
            page.goto(url)
            page.locator("#harmon-generate").wait_for()
            page.screenshot(path=shots / "loaded.png", full_page=True)

            page.locator("#harmon-prompt textarea").fill("a red circle on the left")
            started = time.perf_counter()
            page.click("#harmon-generate")
            live_frames = set()
            while page.locator("#harmon-gallery img").count() == 0:  # the live reveal, until the gallery fills
                live_frames.update(page.eval_on_selector_all("#harmon-live img", "els => els.map(e => e.src)"))
                assert time.perf_counter() - started < 60, "no image within 60 s"
                time.sleep(0.02)
            first_image = time.perf_counter() - started
            print(f"time to first image through the page: {first_image:.2f} s ({len(live_frames)} live frames seen)")
            assert len(live_frames) >= 2, "the masked-autoregressive reveal showed no frame before the image"
            page.locator("#harmon-status").get_by_text("Drew 1 image").wait_for()
            page.screenshot(path=shots / "generated.png", full_page=True)

            source = page.eval_on_selector("#harmon-gallery img", "e => e.src")
            shown = np.asarray(Image.open(io.BytesIO(page.request.get(source).body())).convert("RGB"))
            assert shown.shape == (256, 256, 3)  # 32 px shown 8x, nearest neighbour: every 8x8 block one colour
            np.testing.assert_array_equal(shown, np.repeat(np.repeat(shown[::8, ::8], 8, axis=0), 8, axis=1))
            assert shown.std() > 10 and len(np.unique(shown.reshape(-1, 3), axis=0)) > 8, "the image is blank"

            # The answer the model gives for the picture the page drew (shown 8x, so every 8th pixel is its own).
            question = "what color is the circle?"
            picture = Image.fromarray(shown[::8, ::8].copy())
            expected = [message_text(chat[-1]) for chat, _ in demo.ask(picture, question, [], False, 64)][-1]
            assert expected

            page.get_by_role("button", name="Send to Ask").click()
            page.locator("#harmon-question textarea").fill(question)
            page.click("#harmon-ask")
            bot = "#harmon-chat [data-testid=bot]"
            page.wait_for_function(
                f"() => [...document.querySelectorAll('{bot}')].some(e => e.innerText.trim() === {expected!r})"
            )
            assert page.locator("#harmon-chat [data-testid=user]").inner_text().strip() == question
            page.screenshot(path=shots / "ask.png", full_page=True)
        finally:
            browser.close()
    assert outside == [], f"the page fetched from outside the server: {outside}"
    assert sorted(path.name for path in shots.iterdir()) == ["ask.png", "generated.png", "loaded.png"]


def message_text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)
