"""The web editor as a person uses it: Debian's chromium, driven by Playwright, against
`pix2pixhd serve` started from the command line. Open a bundled sample, paint a stroke of
another class, generate: the photo changes where painted and nowhere out of the model's
reach (conftest.REACH, measured); select an object and remove it; undo; upload maps.
With --token-file: the page asks for the token and its API calls carry it.

Set SERVE_SCREENSHOT=path to keep the screenshot (docs/serve_editor.png was made so)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import REACH, far_from, wait_ready

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason="no chromium (apt-get install chromium; .ci/run does)"
)


def image(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def start(serve_model, tmp_path, *extra: str):
    """`pix2pixhd serve` on a free loopback port until the test ends: yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "pix2pixhd", "serve", "--model", str(serve_model["onnx"])]
    cmd += ["--data", str(serve_model["data"]), "--port", str(port), "--workers", "1", *extra]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with open(tmp_path / "serve.log") as out:
            wait_ready(url, proc, out)
    except AssertionError:
        proc.kill()
        raise
    yield url
    proc.terminate()
    assert proc.wait(20) == 0  # SIGTERM: a clean stop
    log.close()


@pytest.fixture
def server(serve_model, tmp_path):
    yield from start(serve_model, tmp_path)


TOKEN = "editor-token-8d21"


@pytest.fixture
def secured_server(serve_model, tmp_path):
    (tmp_path / "token").write_text(TOKEN)
    yield from start(serve_model, tmp_path, "--token-file", str(tmp_path / "token"))


def test_paint_generate_select_remove_undo_upload(server, serve_model, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server)
        page.wait_for_function("document.querySelectorAll('#sample-select option').length > 0")

        def generated(action, edits: int) -> dict:
            with page.expect_response("**/v1/edit") as response:
                action()
            page.wait_for_function(f"!editor.busy && editor.confirmed === {edits}")
            assert response.value.status == 200, response.value.text()
            return response.value.json()

        opened = generated(lambda: page.click("#open-sample"), 0)
        label0 = image(opened["label"])
        assert np.array_equal(image(opened["before"]), image(opened["after"]))

        # paint a horizontal stroke of 'bus' across the lower middle of the label map
        page.click("#class-28")
        page.fill("#samples", "2")
        box = page.locator("#label-canvas").bounding_box()
        y = box["y"] + 0.8 * box["height"]
        page.mouse.move(box["x"] + 0.3 * box["width"], y)
        page.mouse.down()
        page.mouse.move(box["x"] + 0.6 * box["width"], y, steps=12)
        page.mouse.up()
        painted_body = generated(lambda: page.click("#generate"), 1)
        label1 = image(painted_body["label"])
        painted = label1 != label0
        assert painted.sum() > 50 and set(np.unique(label1[painted])) == {28}
        before, after = image(painted_body["before"]), image(painted_body["after"])
        diff = np.abs(after.astype(int) - before.astype(int)).max(-1)
        assert diff[painted].mean() > 10, diff[painted].mean()  # changed where painted
        far = far_from(painted, REACH)
        assert far.sum() > 1000 and diff[far].max() <= 1  # and nowhere out of reach
        assert page.get_attribute("#result", "src").endswith(painted_body["after"])
        assert page.locator("#samples-row img").count() == 2

        # select the new bus with the select tool, then remove it
        page.check("#tool-select")
        ys, xs = np.nonzero(painted)
        cy, cx = ys[len(ys) // 2], xs[len(xs) // 2]
        h, w = label0.shape
        page.mouse.click(
            box["x"] + (cx + 0.5) * box["width"] / w, box["y"] + (cy + 0.5) * box["height"] / h
        )
        page.wait_for_selector("#selection:not([hidden])")
        assert "(bus)" in page.text_content("#selection-name")
        removed = generated(lambda: page.click("#selection-remove"), 2)
        assert not (image(removed["label"]) == 28).any()

        if os.environ.get("SERVE_SCREENSHOT"):
            generated(lambda: page.click("#undo"), 1)  # the painted state, for the README
            page.screenshot(path=os.environ["SERVE_SCREENSHOT"], full_page=True)
            generated(lambda: page.click("#undo"), 0)
        else:
            generated(lambda: page.click("#undo"), 1)
            generated(lambda: page.click("#undo"), 0)
        # undo twice: back to the map as opened
        assert np.array_equal(page.evaluate("Array.from(editor.view)"), label0.ravel().tolist())
        page.screenshot(path=str(tmp_path / "editor.png"))

        # upload maps from disk instead: the other val sample
        other = sorted(Path(serve_model["data"]).rglob("*_gtFine_labelIds.png"))[-1]
        page.set_input_files("#upload-label", str(other))
        page.set_input_files("#upload-instance", str(other).replace("labelIds", "instanceIds"))
        uploaded = generated(lambda: page.click("#open-upload"), 0)
        assert np.array_equal(image(uploaded["label"]), np.asarray(Image.open(other)))
        assert not errors, errors
        browser.close()


def test_editor_asks_for_the_token_and_sends_it(secured_server, tmp_path):
    """With --token-file the page asks for the token (once, again when refused) and its
    API calls carry it as the Authorization header."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(secured_server)
        page.wait_for_selector("#login:not([hidden])")
        assert page.locator("#sample-select option").count() == 0  # nothing without it
        page.fill("#token", "wrong")
        page.click("#login-submit")
        page.wait_for_function(
            "document.getElementById('login-message').textContent.includes('refused')"
        )
        page.fill("#token", TOKEN)
        page.click("#login-submit")
        page.wait_for_function("document.querySelectorAll('#sample-select option').length > 0")
        assert page.locator("#login").is_hidden()
        with page.expect_response("**/v1/edit") as response:
            page.click("#open-sample")
        assert response.value.status == 200
        assert response.value.request.headers["authorization"] == f"Bearer {TOKEN}"
        assert not errors, errors
        browser.close()
    assert TOKEN not in (tmp_path / "serve.log").read_text()
