"""Serving throughput with and without cross-request micro-batching, measured in one run.

    python benchmarks/serve_batching.py [--clips 8] [--concurrency 8] [--requests 32]

1. ONNX Runtime alone: windows/s of the action model at batch 1 and at batch 16 (the reference is batch 1).
2. The real server (uvicorn on a loopback port, the shipped default models) under ``--concurrency``
   concurrent clients posting SynthAV mp4s: requests/s and latency with ``AVSCENE_MAX_BATCH=1``
   (the reference: every window its own ORT run) and with ``AVSCENE_MAX_BATCH=16``.
Writes benchmarks/results/serve_batching.json and prints a markdown table with the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from model_store import DEFAULT_ROOT
from model_store.registry import ModelStore
from model_store.runtime import load_model

RESULTS = Path(__file__).resolve().parent / "results"


def ort_windows_per_s(root: Path, batch: int, seconds: float = 4.0) -> float:
    model = load_model(ModelStore(root), "action", warmup_batches=(batch,))
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in model.dummy_feeds(batch).items()}
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.run(feeds)
        n += batch
    return n / (time.perf_counter() - t0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, files: list[bytes], concurrency: int, requests: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    counter = iter(range(requests))

    async def client(c: httpx.AsyncClient) -> None:
        for i in counter:
            t0 = time.perf_counter()
            r = await c.post(url, files={"file": ("clip.mp4", files[i % len(files)], "video/mp4")})
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(timeout=120) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        return requests / (time.perf_counter() - t0), latencies


def serve_run(root: Path, max_batch: int, files: list[bytes], concurrency: int, requests: int) -> dict:
    port = _free_port()
    env = {**os.environ, "AVSCENE_MODEL_ROOT": str(root), "AVSCENE_MAX_BATCH": str(max_batch),
           "AVSCENE_BATCH_TIMEOUT_MS": "5", "AVSCENE_TASKS": "action"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
                             "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("server did not become ready")
            time.sleep(0.3)
        asyncio.run(_load(base + "/v1/actions", files, concurrency, concurrency))  # warm-up
        rps, lat = asyncio.run(_load(base + "/v1/actions", files, concurrency, requests))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"max_batch": max_batch, "requests_per_s": rps, "latency_mean_s": float(np.mean(lat)),
            "latency_p95_s": float(np.percentile(lat, 95))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_batching.json")
    args = parser.parse_args()

    from training.data.synthav import write_action_dataset

    with tempfile.TemporaryDirectory() as tmp:
        write_action_dataset(Path(tmp), n=args.clips, seed=4242)
        files = [p.read_bytes() for p in sorted(Path(tmp, "clips").glob("*.mp4"))]
    ort1 = ort_windows_per_s(args.root, 1)
    ort16 = ort_windows_per_s(args.root, 16)
    runs = [serve_run(args.root, b, files, args.concurrency, args.requests) for b in (1, 16)]
    result = {
        "ort_windows_per_s": {"batch1": ort1, "batch16": ort16, "ratio": ort16 / ort1},
        "server": runs,
        "server_throughput_ratio": runs[1]["requests_per_s"] / runs[0]["requests_per_s"],
        "clips": args.clips, "concurrency": args.concurrency, "requests": args.requests,
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| measurement | reference | batched | ratio |\n| --- | ---: | ---: | ---: |")
    print(f"| ORT action model, windows/s (batch 1 vs 16) | {ort1:.1f} | {ort16:.1f} | {ort16 / ort1:.2f}x |")
    r0, r1 = runs
    print(f"| server, requests/s at concurrency {args.concurrency} (max_batch 1 vs 16) | "
          f"{r0['requests_per_s']:.2f} | {r1['requests_per_s']:.2f} | {result['server_throughput_ratio']:.2f}x |")
    print(f"| server, mean latency s | {r0['latency_mean_s']:.3f} | {r1['latency_mean_s']:.3f} | "
          f"{r0['latency_mean_s'] / r1['latency_mean_s']:.2f}x faster |")


if __name__ == "__main__":
    main()
