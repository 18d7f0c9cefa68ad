"""The micro-batcher: concurrent windows share ONNX runs, answers are unchanged, failures reach callers."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_fixtures import test_settings

from app.inference import BatcherClosed, MicroBatcher
from app.main import create_app


class FakeModel:
    """y = 2x + row-sum; records batch sizes and the threads it ran on."""

    def __init__(self, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.threads: set[int] = set()
        self.fail = fail

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.add(threading.get_ident())
        x = feeds["x"]
        self.sizes.append(len(x))
        if self.fail:
            raise RuntimeError("model exploded")
        return {"y": 2 * x + x.sum(axis=1, keepdims=True), "n": np.full(len(x), len(x))}


def expected(x: np.ndarray) -> np.ndarray:
    return 2 * x + x.sum(axis=1, keepdims=True)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_a_run() -> None:
    model = FakeModel()

    async def main():
        batcher = MicroBatcher(model, max_batch=16, timeout_s=0.05)
        await batcher.start()
        inputs = [np.random.default_rng(i).standard_normal((2, 4)).astype(np.float32) for i in range(5)]
        outs = await asyncio.gather(*(batcher.infer({"x": x}) for x in inputs))
        await batcher.stop()
        return batcher, inputs, outs

    batcher, inputs, outs = run(main())
    assert model.sizes == [10]
    assert threading.get_ident() not in model.threads  # never on the event loop's thread
    for x, out in zip(inputs, outs, strict=True):
        np.testing.assert_allclose(out["y"], expected(x), rtol=1e-6)
    assert batcher.stats.as_dict() == {"batches": 1, "windows": 10, "items": 5, "largest_batch": 10,
                                       "most_items_in_batch": 5, "errors": 0}


def test_large_request_is_split_into_chunks() -> None:
    model = FakeModel()

    async def main():
        batcher = MicroBatcher(model, max_batch=16, timeout_s=0.0)
        await batcher.start()
        x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
        out = await batcher.infer({"x": x})
        await batcher.stop()
        return x, out

    x, out = run(main())
    assert sorted(model.sizes) == [8, 16, 16] and max(model.sizes) <= 16
    np.testing.assert_allclose(out["y"], expected(x))
    assert out["n"].shape == (40,)


def test_batches_never_mix_shapes_or_exceed_max() -> None:
    model = FakeModel()

    async def main():
        batcher = MicroBatcher(model, max_batch=4, timeout_s=0.05)
        await batcher.start()
        xs = [np.ones((3, 2), np.float32), np.ones((3, 5), np.float32), np.ones((1, 2), np.float32),
              np.ones((2, 2), np.float32)]
        outs = await asyncio.gather(*(batcher.infer({"x": x}) for x in xs))
        await batcher.stop()
        return xs, outs

    xs, outs = run(main())
    assert max(model.sizes) <= 4 and sum(model.sizes) == 9
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_allclose(out["y"], expected(x))


def test_failures_reach_every_caller_and_the_worker_survives() -> None:
    model = FakeModel(fail=True)

    async def main():
        batcher = MicroBatcher(model, max_batch=8, timeout_s=0.02)
        await batcher.start()
        results = await asyncio.gather(
            *(batcher.infer({"x": np.ones((1, 2), np.float32)}) for _ in range(3)), return_exceptions=True
        )
        model.fail = False
        after = await batcher.infer({"x": np.ones((1, 2), np.float32)})
        await batcher.stop()
        with pytest.raises(BatcherClosed):
            await batcher.infer({"x": np.ones((1, 2), np.float32)})
        return batcher, results, after

    batcher, results, after = run(main())
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)
    assert batcher.stats.errors == 1
    np.testing.assert_allclose(after["y"], [[4.0, 4.0]])


def test_http_concurrent_requests_are_batched_with_unchanged_answers(
    client: TestClient, store_root: Path, media_dir: Path
) -> None:
    videos = [media_dir / name for name in ("av.mp4", "silent.mp4", "short.mp4")] * 3

    def post(c: TestClient, path: Path) -> dict:
        with open(path, "rb") as fh:
            r = c.post("/v1/actions", params={"top_k": 8}, files={"file": (path.name, fh, "video/mp4")})
        assert r.status_code == 200, r.text
        return r.json()

    sequential = [post(client, v) for v in videos]
    settings = test_settings(store_root, batch_timeout_ms=300, max_concurrent_decodes=len(videos),
                             max_requests_in_flight=len(videos))
    with TestClient(create_app(settings)) as c, ThreadPoolExecutor(len(videos)) as pool:
        concurrent = list(pool.map(lambda v: post(c, v), videos))
        stats = c.app.state.service.batchers["action"].stats
    assert stats.most_items_in_batch > 1, stats
    assert stats.largest_batch <= 16
    assert stats.windows == sum(len(r["segments"]) for r in concurrent)
    assert stats.batches < len(videos)
    for seq, con in zip(sequential, concurrent, strict=True):
        assert [i["label"] for i in seq["top_k"]] == [i["label"] for i in con["top_k"]]
        np.testing.assert_allclose([i["score"] for i in seq["top_k"]], [i["score"] for i in con["top_k"]],
                                   atol=1e-5)
        assert [(s["start_s"], s["end_s"]) for s in seq["segments"]] == [
            (s["start_s"], s["end_s"]) for s in con["segments"]
        ]
