"""The web page in real headless Chromium against a real uvicorn server on 127.0.0.1.

Chromium is driven over the DevTools protocol (``websockets``): browse with ``?item_id=``,
click a result with a real mouse event, and upload a photo through the file input
(``DOM.setFileInputFiles``). Screenshots are kept: ``$FASHIONOPS_SCREENSHOT_DIR`` (else the
test's tmp dir); their paths are printed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
]


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; installed by scripts/ensure_chromium.sh when missing, else skip."""
    path = _find_chromium()
    if path is None:
        script = REPO / "scripts" / "ensure_chromium.sh"
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
        path = _find_chromium()
        if path is None:
            pytest.skip(f"chromium is not installed and could not be installed: {proc.stderr.strip()[-300:]}")
    return path


class CDP:
    """A minimal DevTools-protocol client: one page target in flattened session mode."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=20)
        self._ids = itertools.count(1)
        self.session: str | None = None

    def call(self, method: str, timeout: float = 30.0, **params) -> dict:
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"CDP {method}: no answer in {timeout} s")
            reply = json.loads(self.ws.recv(timeout=left))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"CDP {method}: {reply['error']}")
                return reply.get("result", {})

    def open_page(self, width: int = 1200, height: int = 900) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JS error in {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.1)
        state = self.eval("document.getElementById('status') && document.getElementById('status').textContent")
        raise TimeoutError(f"page never satisfied {expression!r} (status: {state!r})")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def upload(self, url: str, path: Path) -> None:
        """Open the app at ``url`` and choose ``path`` in its file input (as a user picking a file)."""
        self.open_page()
        self.call("Page.navigate", url=f"{url}/")
        self.wait_for("document.readyState === 'complete' && !!document.getElementById('file-input')")
        doc = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=doc, selector="#file-input")["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=[str(path)])

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (not element.click())."""
        box = self.eval(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def close(self) -> None:
        from websockets.exceptions import WebSocketException

        try:
            self.ws.close()
        except (OSError, WebSocketException):
            pass  # the browser may have dropped the socket already: nothing is left to close


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    """Headless Chromium with a fresh profile, remote debugging on a free loopback port."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"chromium did not start: {proc.stderr.read().decode()[-500:]}")
        time.sleep(0.1)
    port, path = port_file.read_text().splitlines()[:2]
    cdp = CDP(f"ws://127.0.0.1:{port}{path}")
    try:
        yield cdp
    finally:
        cdp.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def live(tiny_pipeline):
    """The real app on a free 127.0.0.1 port over the tiny pipeline's models."""
    from fashionops.serving.app import create_app, serve_in_thread

    p = tiny_pipeline.model_copy(deep=True)
    p.serve.source = "local"
    p.serve.jit = False  # the page, not inference speed, is under test here
    os.environ.pop(p.serve.token_env, None)
    with serve_in_thread(create_app(p)) as url:
        yield url, p


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("FASHIONOPS_SCREENSHOT_DIR")
    path = Path(out) if out else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _items(params) -> pd.DataFrame:
    return pd.read_parquet(Path(params.paths.index_dir) / "items.parquet")


CARDS_LOADED = (
    "(() => { const cards = document.querySelectorAll('#results .card');"
    " const imgs = [...document.querySelectorAll('#results .card img')];"
    " return cards.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) ? cards.length : 0; })()"
)
CARD_IDS = "[...document.querySelectorAll('#results .card')].map(c => Number(c.dataset.itemId))"


def test_browse_by_item_and_click_a_result(live, browser, shots):
    url, params = live
    items = _items(params)
    item_id = int(items["id"].iloc[7])
    expected = httpx.post(f"{url}/search", json={"item_id": item_id}, timeout=30).json()["results"]

    browser.open_page()
    browser.call("Page.navigate", url=f"{url}/?item_id={item_id}")
    n = browser.wait_for(CARDS_LOADED)
    assert n == len(expected) == params.serve.top_k
    assert browser.eval(CARD_IDS) == [r["id"] for r in expected]
    names = browser.eval("[...document.querySelectorAll('#results .card .name')].map(e => e.textContent)")
    assert names == [r["name"] for r in expected]
    title = items.set_index("id").loc[item_id, "productDisplayName"]
    assert browser.eval("document.getElementById('query-item-name').textContent") == title
    assert browser.eval("document.getElementById('query-image').naturalWidth") > 0
    assert "items" in browser.wait_for(
        "document.getElementById('model-info').textContent.includes('items') "
        "&& document.getElementById('model-info').textContent"
    )
    print("screenshot:", browser.screenshot(shots / "web_ui_browse.png"))

    # Click the second result: the page browses to it (URL and grid change).
    target = expected[1]["id"]
    browser.click("#results .card:nth-child(2)")
    browser.wait_for(f"location.search === '?item_id={target}'")
    browser.wait_for(f"document.getElementById('query-item-name').textContent === {json.dumps(expected[1]['name'])}")
    browser.wait_for(CARDS_LOADED)
    after = httpx.post(f"{url}/search", json={"item_id": target}, timeout=30).json()["results"]
    after_ids = json.dumps([r["id"] for r in after]).replace(" ", "")
    browser.wait_for(f"JSON.stringify({CARD_IDS}) === {json.dumps(after_ids)}")


def test_upload_a_photo_shows_prediction_and_similar_items(live, browser, shots):
    url, params = live
    items = _items(params)
    item_id = int(items["id"].iloc[11])
    photo = Path(params.paths.raw_dir) / "images" / f"{item_id}.jpg"
    with photo.open("rb") as fh:
        pred = httpx.post(f"{url}/classify", files={"file": (photo.name, fh.read(), "image/jpeg")}, timeout=30).json()

    browser.upload(url, photo)

    browser.wait_for("!document.getElementById('prediction').hidden")
    n = browser.wait_for(CARDS_LOADED)
    assert n == params.serve.top_k
    assert browser.eval("document.getElementById('pred-label').textContent") == pred["label"]
    prob = browser.eval("document.getElementById('pred-prob').textContent")
    assert prob.startswith(f"{100 * pred['probability']:.1f}%"), prob
    top = browser.eval("[...document.getElementById('pred-top').children].map((li) => li.textContent)")
    assert [t.rsplit(" ", 1)[0] for t in top] == pred["top_labels"]  # the API's top_labels / top_probabilities
    # The photo is a catalogue image: it (or a byte-identical copy) is the first result.
    sha = items.set_index("id").loc[item_id, "sha256"]
    same = set(items.loc[items["sha256"] == sha, "id"].astype(int))
    assert browser.eval(CARD_IDS)[0] in same
    assert browser.eval("document.getElementById('query-image').naturalWidth") > 0
    shot = browser.screenshot(shots / "web_ui_upload.png")
    print("screenshot:", shot)
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank frame


def test_bad_upload_shows_error_and_page_recovers(live, browser, tmp_path):
    url, params = live
    bad = tmp_path / "not_an_image.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    browser.upload(url, bad)
    status = browser.wait_for(
        "document.getElementById('status').classList.contains('error') && document.getElementById('status').textContent"
    )
    assert "not an image" in status
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
