"""``convspec serve`` as a real uvicorn process on 127.0.0.1 (torch blocked), and its page in Chromium.

The server runs ``convspec serve`` in a subprocess where ``import torch`` fails, so these
tests also prove the command never needs torch. The browser test drives Debian's headless
Chromium through Selenium (skipped, with a message, where no browser is installed) and
saves a screenshot (also copied to /work/serve-screenshot.png when /work exists).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from convspec.compiler.cli.serve import parse_size
from convspec.specs import ConvspecError

# Why None: a module set to None in sys.modules makes ``import torch`` raise ImportError.
TORCH_BLOCKED_CLI = """
import os, sys
for name in ("torch", "torchvision", "timm", *os.environ.get("BLOCK_MODULES", "").split()):
    sys.modules[name] = None
from convspec.compiler.cli import main
sys.argv = ["convspec", *sys.argv[1:]]
main()
"""
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(model: Path, *args: str, block: tuple[str, ...] = ()):
    """``convspec serve MODEL`` (torch and ``block`` blocked) on a free loopback port; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", TORCH_BLOCKED_CLI, "serve", str(model), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "BLOCK_MODULES": " ".join(block)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"convspec serve exited with {proc.returncode}:\n{proc.stdout.read()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail("convspec serve did not answer /health within 60 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        assert "Traceback" not in out, out


def band_png(tmp_path: Path, j: int) -> bytes:
    a = np.full((6, 6), 10, np.uint8)
    a[2 * j : 2 * j + 2] = 250
    path = tmp_path / f"band{j}.png"
    Image.fromarray(a).save(path)
    return path.read_bytes()


def test_parse_size():
    assert parse_size("20MB") == 20_000_000 and parse_size("512KB") == 512_000 and parse_size("1000") == 1000
    assert parse_size("1MiB") == 2**20 and parse_size("1.5kb") == 1500 and parse_size("2 GB") == 2 * 10**9
    for bad in ("", "MB", "-1MB", "20 furlongs", "0"):
        with pytest.raises(ConvspecError, match="--max-bytes"):
            parse_size(bad)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_address_it_cannot_listen_on_is_one_line_and_exit_1(digits_run, workers):
    """A taken port (another server on it) or a host that is not this machine's: exit 1, one line, no uvicorn log."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for where, reason in ((["--port", str(port)], "in use"), (["--host", "nosuch.invalid"], "not known")):
            proc = subprocess.run(
                [sys.executable, "-c", TORCH_BLOCKED_CLI, "serve", str(digits_run / "model.onnx"), *where,
                 "--workers", workers],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert proc.returncode == 1, proc.stderr
            assert proc.stderr.count("\n") == 1 and "cannot listen there" in proc.stderr and reason in proc.stderr
            assert "Uvicorn" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stack", ["httptools+uvloop", "h11+asyncio"])
def test_real_server_without_torch_survives_slow_and_dropped_clients(tmp_path, band, stack):
    """On uvicorn's fast stack (the ``serve`` extra installs it) and on its pure-Python fallback."""
    if stack == "httptools+uvloop":
        pytest.importorskip("httptools")
        pytest.importorskip("uvloop")
    block = () if stack == "httptools+uvloop" else ("httptools", "uvloop")
    model = band.model(tmp_path / "band.onnx")
    body = band_png(tmp_path, 1)
    with serving(model, "--max-bytes", "1KB", "--max-delay-ms", "2", block=block) as url:
        # A slow client: headers and half its body sent, the rest never comes.
        slow = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        slow.sendall(head + body[: len(body) // 2])
        # A dropped client: half a body, then gone.
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as dropped:
            dropped.sendall(head + body[:10])
        start = time.monotonic()
        for _ in range(5):
            r = httpx.post(url + "/predict", content=body, timeout=10)
            assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "b"
        assert time.monotonic() - start < 5  # not held up behind the slow client's half batch
        r = httpx.post(url + "/predict", content=b"\0" * 2000, timeout=10)
        assert r.status_code == 413 and "1000 bytes" in r.json()["error"]
        assert httpx.get(url + "/health").json() == {"status": "ok"}
        assert "convspec_requests_total" in httpx.get(url + "/metrics").text
        # A head of 200 KiB of headers (httptools had no cap: 160 MB of them held 365 MB, unanswered)
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as big:
            big.settimeout(10)
            big.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 4000 + b"\r\n")
            with contextlib.suppress(OSError):  # the server may close while we still send
                for _ in range(50):
                    big.sendall(b"X-Pad: " + b"a" * 4000 + b"\r\n")
            try:
                answer = big.recv(200)  # an answer, or b"" / a reset: closed; never a wait for more headers
            except TimeoutError:
                pytest.fail("the server kept reading an unbounded request head")
            except ConnectionResetError:
                answer = b""
            assert answer == b"" or answer.split(b" ")[1] in (b"400", b"431"), answer
        assert httpx.get(url + "/health").json() == {"status": "ok"}
        slow.close()


def browser_or_skip():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"no browser: needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,700"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.slow
def test_page_in_headless_chromium(digits_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from sklearn.datasets import load_digits

    from convspec.runtime import Predictor

    model = digits_run / "model.onnx"
    d = load_digits()
    images = []
    for i in (1790, 1795):  # from the end of the set; shown large (nearest) so a person sees them
        a = np.rint(d.images[i] * 255 / 16).astype(np.uint8)
        path = tmp_path / f"digit-{i}.png"
        Image.fromarray(a).resize((96, 96), Image.Resampling.NEAREST).save(path)
        images.append(path)
    want = {p.name: pred.label for p, pred in zip(images, Predictor(model).predict(images), strict=True)}

    driver = browser_or_skip()
    try:
        with serving(model) as url:
            driver.get(url + "/")
            WebDriverWait(driver, 20).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
            driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in images))
            WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result.done")) == 2)
            shown = {
                card.get_attribute("data-source"): card.find_element(By.CSS_SELECTOR, ".label").text
                for card in driver.find_elements(By.CSS_SELECTOR, ".result.done")
            }
            rows = driver.find_elements(By.CSS_SELECTOR, ".result .row")
            assert len(rows) == 2 * 3  # the page asks for the top 3 by default
            shot = tmp_path / "serve-screenshot.png"
            driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert shown == want
    assert shot.stat().st_size > 5_000
    if Path("/work").is_dir():
        with contextlib.suppress(OSError):
            shutil.copy(shot, "/work/serve-screenshot.png")


def test_several_workers_refuse_a_model_whose_graph_disagrees_with_its_metadata_once(digits_run, tmp_path):
    """Each of N workers used to die on it with a traceback and be restarted without end."""
    import onnx

    model = onnx.load(digits_run / "model.onnx")
    for prop in model.metadata_props:
        if prop.key == "convspec.channels":
            prop.value = "3"  # the graph takes 1
    onnx.save(model, tmp_path / "three.onnx")
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_BLOCKED_CLI, "serve", str(tmp_path / "three.onnx"), "--port", str(free_port()),
         "--workers", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "three.onnx" in proc.stderr and "Traceback" not in proc.stderr
