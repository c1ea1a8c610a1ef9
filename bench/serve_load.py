"""Load test of ``convspec serve``: a server on 127.0.0.1, an httpx async client at 1, 8 and 64 connections.

Each request is one PNG as the raw body (what a web service sends). Per level: requests/s,
p50/p99 latency, errors (a non-200 answer, an exception, or a label other than the one the
in-process Predictor gives for that image), and the server's RSS. Then, measured in the same
run on the same images:

- ``served / in-process``: throughput at 64 connections against ``Predictor.predict`` in
  this process (files, batches of 64); goal >= 0.7; and, stricter, against the cheapest
  in-process path (each file decoded in one thread, then ``predict_arrays`` on 64);
- ``batching``: the server at 64 connections against a second server started with
  ``--max-batch 1``; goal >= 2;
- ``RSS growth``: the server's RSS at the end against after warm-up; goal < 10 %.

Every level is bounded by ``--requests`` and ``--seconds``; the three 64-connection
measurements run ``--rounds`` times, interleaved, and the ratios use their medians (a shared
machine's speed drifts). Because wall-clock ratios depend on what else the machine runs, it
also prints CPU milliseconds per image (server process, all threads) against in-process
``Predictor.predict``'s. The client (aiohttp where installed, else httpx) runs on the same
cores; its CPU per request is printed too. Only 127.0.0.1 is contacted.

Usage::

    python bench/serve_load.py [--model MODEL.onnx] [--size 64] [--channels 3] [--requests 3000] [--seconds 20]

Without ``--model`` it trains a 1-epoch digits model first, in a child process (this process
stays torch-free, like a deployment): RGB 64x64 by default (``--size``, ``--channels``), because
served models take real-size images and the HTTP layer's cost per request is the same whatever
the model; ``--size 32 --channels 1`` is the smallest case, where HTTP weighs most. The images
are the last 200 sklearn digits at the model's input size (RGB for a 3-channel model), one PNG
each, as a client that resizes before sending would send them. The server's ``/metrics`` gives
the mean ONNX Runtime batch at 64 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def train_digits(out: Path, size: int, channels: int) -> Path:
    """examples/digits.yaml for 1 epoch at ``channels`` x ``size`` x ``size``, in a child process."""
    norm = ", ".join(["0.5"] * channels)
    cmd = [sys.executable, "-m", "convspec.compiler", "train", str(REPO / "examples" / "digits.yaml")]
    cmd += ["--set", "training.epochs=1", "--set", f"input.size=[{size},{size}]", "--set", f"input.channels={channels}"]
    cmd += ["--set", f"preprocess=[{{type: normalize, mean: [{norm}], std: [{norm}]}}]", "--out", str(out)]
    print(f"training a 1-epoch digits model ({channels}x{size}x{size}) in {out} ...", flush=True)
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out / "digits-cnn" / "model.onnx"


def make_images(folder: Path, n: int, channels: int = 1, size: tuple[int, int] = (8, 8)) -> list[Path]:
    """The last ``n`` sklearn digits as PNG files of ``size`` (height, width), grey or RGB."""
    from PIL import Image
    from sklearn.datasets import load_digits

    pixels = np.rint(load_digits().images[-n:] * 255 / 16).astype(np.uint8)
    paths = []
    for i, a in enumerate(pixels):
        im = Image.fromarray(a).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        paths.append(folder / f"{i:04d}.png")
        (im.convert("RGB") if channels == 3 else im).save(paths[-1])
    return paths


def batch_totals(url: str) -> tuple[float, float]:
    """``(ONNX Runtime runs, images in them)`` so far, from the server's ``convspec_batch_size`` histogram."""
    import httpx

    count = total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("convspec_batch_size_count"):
            count = float(line.split()[-1])
        elif line.startswith("convspec_batch_size_sum"):
            total = float(line.split()[-1])
    return count, total


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(model: Path, *args: str):
    """``convspec serve MODEL`` on a free loopback port; yields ``(url, pid)``."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "convspec.compiler", "serve", str(model), "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"convspec serve exited: {proc.stderr.read()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("convspec serve did not start within 60 s")
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    url: str, bodies: list[bytes], labels: list[str], conc: int, total: int, seconds: float, client: str
) -> dict:
    """``conc`` connections sending ``total`` requests (or for ``seconds``), round-robin over the images."""
    latencies: list[float] = []
    errors = 0
    next_i = 0
    stop_at = time.perf_counter() + seconds
    if client == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            url, connector=aiohttp.TCPConnector(limit=conc), timeout=aiohttp.ClientTimeout(total=30)
        )

        async def post(body: bytes) -> tuple[int, dict]:
            async with session.post("/predict", data=body) as r:
                return r.status, await r.json()
    else:
        import httpx

        limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
        session = httpx.AsyncClient(base_url=url, limits=limits, timeout=30)

        async def post(body: bytes) -> tuple[int, dict]:
            r = await session.post("/predict", content=body)
            return r.status_code, r.json()

    async def worker():
        nonlocal next_i, errors
        while next_i < total and time.perf_counter() < stop_at:
            i = next_i % len(bodies)
            next_i += 1
            t = time.perf_counter()
            try:
                status, answer = await post(bodies[i])
                ok = status == 200 and answer["predictions"][0]["label"] == labels[i]
            except Exception:
                ok = False
            latencies.append(time.perf_counter() - t)
            errors += not ok

    async with session:
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*[worker() for _ in range(conc)])
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "rps": len(latencies) / wall,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "errors": errors,
        "client_cpu_ms": 1000 * cpu / max(1, len(latencies)),
    }


def in_process(model: Path, paths: list[Path], total: int, seconds: float) -> dict:
    """``Predictor.predict`` on the same files in batches of 64 (after a warm-up pass): images/s, CPU ms/image.

    Measured with ORT's thread spinning on (Predictor's default) and off (what the server
    uses); the faster one is the baseline. Why both: spinning wins on an idle machine and
    loses badly on a busy one, and the goal is against the best in-process figure.
    """
    from convspec.runtime import Predictor

    best: dict = {}
    for spinning in (True, False):
        p = Predictor(model, spinning=spinning)
        p.predict(paths, batch_size=64)
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        while n < total and time.perf_counter() - start < seconds:
            n += len(p.predict(paths, batch_size=64))
        r = {"rps": n / (time.perf_counter() - start), "cpu_ms": 1000 * (time.process_time() - cpu) / n}
        best[spinning] = r
        del p
    winner = max(best, key=lambda k: best[k]["rps"])
    return {**best[winner], "spinning": winner, "other_rps": best[not winner]["rps"]}


def in_process_lean(model: Path, paths: list[Path], total: int, seconds: float) -> dict:
    """The least an in-process caller can spend: each file decoded in this thread, then ORT on batches of 64.

    Why also this: ``Predictor.predict`` decodes in a thread pool (GIL hand-offs), so on 2 cores
    it may spend more CPU per image than decode + ORT in one thread; this bound says what the
    server costs against the cheapest in-process path. ORT spinning on
    and off, the faster counts (as in :func:`in_process`).
    """
    from convspec.runtime import Predictor
    from convspec.runtime.images import load_image

    def once(p: Predictor) -> int:
        c, (h, w), how = p.info.channels, p.info.size, p.info.resize
        for i in range(0, len(paths), 64):
            batch = np.stack([load_image(f, c, (h, w), how) for f in paths[i : i + 64]])
            probs = p.class_probabilities(p.predict_arrays(batch))
            [p._prediction(str(f), row, 1) for f, row in zip(paths[i : i + 64], probs)]
        return len(paths)

    best = []
    for spinning in (True, False):
        p = Predictor(model, spinning=spinning)
        once(p)
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        while n < total and time.perf_counter() - start < seconds:
            n += once(p)
        best.append({"rps": n / (time.perf_counter() - start), "cpu_ms": 1000 * (time.process_time() - cpu) / n})
    return max(best, key=lambda r: r["rps"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="an exported .onnx (default: train a 1-epoch digits model)")
    ap.add_argument("--size", type=int, default=64, help="input size of the trained default model")
    ap.add_argument("--channels", type=int, choices=(1, 3), default=3, help="channels of the trained default model")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--image-px", type=int, help="send N x N images (default: the model input size; 8: raw digits)")
    ap.add_argument("--requests", type=int, default=3000, help="most requests per level")
    ap.add_argument("--seconds", type=float, default=20.0, help="most seconds per level")
    ap.add_argument("--max-delay-ms", default="5")
    ap.add_argument(
        "--client",
        choices=("httpx", "aiohttp"),
        default="aiohttp" if importlib.util.find_spec("aiohttp") else "httpx",
        help="aiohttp where installed: httpx's pool costs ~10 ms CPU a request at 64 connections, on the same cores",
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three 64-way measurements")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="convspec-serve-load-") as tmp:
        tmp = Path(tmp)
        model = args.model or train_digits(tmp / "runs", args.size, args.channels)
        from convspec.runtime import Predictor

        channels, height, width = Predictor(model).input_shape
        shape = (args.image_px, args.image_px) if args.image_px else (height, width)
        paths = make_images(tmp, args.images, channels, shape)
        labels = [p.label for p in Predictor(model).predict(paths)]
        bodies = [p.read_bytes() for p in paths]
        trained = "" if args.model else f"1-epoch digits, trained here, {Path(model).stat().st_size / 1e6:.2f} MB, "
        print(
            f"model {model} ({trained}input {channels}x{height}x{width}); {len(paths)} PNG images of "
            f"{shape[1]}x{shape[0]} ({np.mean([len(b) for b in bodies]) / 1000:.1f} kB mean); {os.cpu_count()} CPUs, "
            f"load average {load_average()} (1/5/15 min); client {args.client}"
        )

        head = (
            "server",
            "conns",
            "requests",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "srv CPU ms/req",
            "cli CPU ms/req",
        )
        print(f"{head[0]:<15}" + "".join(f"{h:>10}" for h in head[1:7]) + "".join(f"{h:>16}" for h in head[7:]))

        def measure(name: str, url: str, pid: int, conc: int) -> dict:
            cpu = cpu_seconds(pid)
            r = asyncio.run(load(url, bodies, labels, conc, args.requests, args.seconds, args.client))
            r["server_cpu_ms"] = 1000 * (cpu_seconds(pid) - cpu) / max(1, r["requests"])
            print(
                f"{name:<15}{conc:>10}{r['requests']:>10}{r['rps']:>10.1f}{r['p50']:>10.2f}{r['p99']:>10.2f}"
                f"{r['errors']:>10}{r['server_cpu_ms']:>16.2f}{r['client_cpu_ms']:>16.2f}",
                flush=True,
            )
            return r

        def warm_up(url: str) -> None:
            asyncio.run(load(url, bodies, labels, 64, min(1000, args.requests), args.seconds, args.client))

        # Why rounds, interleaved: on a shared machine the load of others drifts within a
        # minute; each ratio compares medians of runs made side by side.
        with (
            server(model, "--max-delay-ms", args.max_delay_ms) as (url, pid),
            server(model, "--max-batch", "1") as (url1, pid1),
        ):
            rss_start = rss_mb(pid)
            warm_up(url)
            warm_up(url1)
            rss_warm = rss_mb(pid)
            levels = {conc: measure("batching", url, pid, conc) for conc in (1, 8)}
            rounds: dict[str, list] = {"base": [], "lean": [], "batched": [], "single": []}
            runs, images = batch_totals(url)
            for _ in range(args.rounds):
                rounds["base"].append(in_process(model, paths, args.requests, args.seconds))
                b = rounds["base"][-1]
                print(
                    f"in-process Predictor.predict, batches of 64: {b['rps']:.1f} images/s, "
                    f"{b['cpu_ms']:.2f} ms CPU/image (ORT spinning {'on' if b['spinning'] else 'off'}; "
                    f"{'off' if b['spinning'] else 'on'}: {b['other_rps']:.1f} images/s; load {load_average()})",
                    flush=True,
                )
                rounds["lean"].append(in_process_lean(model, paths, args.requests, args.seconds))
                lean = rounds["lean"][-1]
                print(
                    f"in-process lean (decode in one thread, then predict_arrays on 64): {lean['rps']:.1f} images/s, "
                    f"{lean['cpu_ms']:.2f} ms CPU/image",
                    flush=True,
                )
                rounds["batched"].append(measure("batching", url, pid, 64))
                rounds["single"].append(measure("--max-batch 1", url1, pid1, 64))
            runs, images = (a - b for a, b in zip(batch_totals(url), (runs, images)))
            rss_end = rss_mb(pid)

    def median(key: str, field: str = "rps") -> float:
        return float(np.median([r[field] for r in rounds[key]]))

    errors = sum(r["errors"] for r in levels.values()) + sum(
        r["errors"] for key in ("batched", "single") for r in rounds[key]
    )
    base, batched, single = median("base"), median("batched"), median("single")
    growth = (rss_end - rss_warm) / rss_warm
    print(
        f"medians of {args.rounds} rounds: in-process {base:.1f} images/s, served at 64 connections "
        f"{batched:.1f} req/s, --max-batch 1 {single:.1f} req/s"
    )
    print(f"server RSS: {rss_start:.1f} MB at start, {rss_warm:.1f} MB after warm-up, {rss_end:.1f} MB at the end")
    print(f"errors: {errors} (goal 0)")
    print(f"served / in-process at 64 connections: {batched / base:.2f}x (goal >= 0.7)")
    lean = median("lean")
    print(f"served / in-process lean (the cheapest in-process path, stricter): {batched / lean:.2f}x")
    print(f"batching / --max-batch 1 at 64 connections: {batched / single:.2f}x (goal >= 2)")
    print(f"RSS growth after warm-up: {growth * 100:+.1f} % (goal < 10 %)")
    print(f"batching server at 64 connections: {images / max(1, runs):.1f} images per ONNX Runtime run on average")
    # CPU per image does not depend on how much of the machine others take: efficiency ratios.
    cpu_base, cpu_batched, cpu_single = (
        median("base", "cpu_ms"),
        median("batched", "server_cpu_ms"),
        median("single", "server_cpu_ms"),
    )
    print(
        f"CPU per image: in-process {cpu_base:.2f} ms, server {cpu_batched:.2f} ms, --max-batch 1 {cpu_single:.2f} ms"
        f"; in-process/server {cpu_base / cpu_batched:.2f}x, --max-batch 1/batching {cpu_single / cpu_batched:.2f}x"
    )
    cpu_lean = median("lean", "cpu_ms")
    print(f"CPU per image, in-process lean: {cpu_lean:.2f} ms; lean/server {cpu_lean / cpu_batched:.2f}x")
    print(f"load average {load_average()} (1/5/15 min) at the end")


if __name__ == "__main__":
    main()
