"""Decodes in worker processes (app/decoding.py): the same result as in the server's process, errors with their
status, and a decode that stops when its request is cancelled, passes its deadline or loses its worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from media_files import write_video
from test_server import REPO

from app.decoding import DecodePool, upload_errors
from model_store.manifest import ClipSpec
from model_store.media import DecodeStopped, MediaError, MediaLimits, decode

CLIP = ClipSpec(fps=8, frames=8, height=32, width=32, sample_rate=16000, audio_samples=16000)
LIMITS = MediaLimits()


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("pool") / "short.mp4", seconds=2.0)


@pytest.fixture(scope="module")
def long(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 s of noise at 320x240, no audio: a decode of it takes about half a second here, long enough to be
    stopped in the middle (every frame is unlike the one before, so nothing is cheap to decode)."""
    path = tmp_path_factory.mktemp("pool") / "noise.mp4"
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(5)]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(30 * 25):
            frame = av.VideoFrame.from_ndarray(pictures[i % len(pictures)], format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def run(coro):
    return asyncio.run(coro)


def test_a_pooled_decode_is_the_in_process_decode(short: Path) -> None:
    async def go():
        pool = DecodePool(2)
        try:
            return await asyncio.gather(*(pool.decode(short, CLIP, LIMITS, 1) for _ in range(3)))
        finally:
            pool.shutdown()

    here = decode(short, CLIP, LIMITS, threads=1)
    for there in run(go()):
        assert np.array_equal(there.frames, here.frames) and np.array_equal(there.audio, here.audio)
        assert there.duration_s == here.duration_s and there.has_audio


def test_errors_cross_with_their_status_and_without_the_path(tmp_path: Path) -> None:
    write_video(tmp_path / "one.mp4", seconds=0.04)  # a one-frame video: "not a video", 415
    (tmp_path / "notes.mp4").write_text("not a video at all\n" * 50)

    async def pooled(path: Path) -> MediaError:
        pool = DecodePool(1)
        try:
            with pytest.raises(MediaError) as info:
                await pool.decode(path, CLIP, LIMITS, 1)
            return info.value
        finally:
            pool.shutdown()

    for name in ["one.mp4", "notes.mp4"]:
        path = tmp_path / name
        with pytest.raises(MediaError) as here:
            with upload_errors(path):
                decode(path, CLIP, LIMITS, threads=1)
        there = run(pooled(path))
        assert (there.status, there.detail) == (here.value.status, here.value.detail) and there.status == 415
        assert str(tmp_path) not in there.detail


def test_cancelling_the_request_stops_its_decode(short: Path, long: Path) -> None:
    async def go() -> DecodePool:
        pool = DecodePool(1)
        try:
            await pool.decode(short, CLIP, LIMITS, 1)  # the worker is up
            task = asyncio.create_task(pool.decode(long, CLIP, LIMITS, 1))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the only worker takes the next decode once the cancelled one has stopped at its next packet
            after = await pool.decode(short, CLIP, LIMITS, 1)
            assert after.frames.shape[0] == 16
            return pool
        finally:
            pool.shutdown()

    pool = run(go())
    assert pool.stopped == 1


def test_a_decode_past_its_deadline_stops(long: Path) -> None:
    async def go() -> None:
        pool = DecodePool(1)
        try:
            with pytest.raises(DecodeStopped):
                await pool.decode(long, CLIP, LIMITS, 1, deadline=time.monotonic() + 0.1)
        finally:
            pool.shutdown()

    run(go())


def test_a_decode_stops_when_its_work_says_so(long: Path) -> None:
    async def go() -> None:
        pool = DecodePool(1)
        t0 = time.monotonic()
        try:
            with pytest.raises(DecodeStopped):
                await pool.decode(long, CLIP, LIMITS, 1, should_stop=lambda: time.monotonic() - t0 > 0.1)
        finally:
            pool.shutdown()

    run(go())


def test_a_dead_worker_is_replaced_and_the_decode_tried_again(short: Path, long: Path) -> None:
    async def go():
        pool = DecodePool(1)
        try:
            await pool.decode(short, CLIP, LIMITS, 1)  # the worker is up
            (pid,) = pool.worker_pids()
            task = asyncio.create_task(pool.decode(long, CLIP, LIMITS, 1))
            await asyncio.sleep(0.1)
            os.kill(pid, signal.SIGKILL)  # as a decoder crash would end it
            decoded = await task
            return decoded, pool.restarts, pool.worker_pids(), pid
        finally:
            pool.shutdown()

    decoded, restarts, pids, dead = run(go())
    assert restarts == 1 and dead not in pids
    assert decoded.frames.shape[0] == 240 and not decoded.has_audio


def test_workers_end_with_a_killed_server(tmp_path: Path) -> None:
    """A server killed outright (no shutdown) leaves no decode worker behind: each watches the server's pid."""
    script = tmp_path / "server.py"
    script.write_text(
        "import asyncio, os, sys\n"
        "from app.decoding import DecodePool\n"
        "async def main():\n"
        "    pool = DecodePool(2)\n"
        "    await pool.start()\n"
        "    print(' '.join(map(str, pool.worker_pids())), flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2 and all(Path(f"/proc/{p}").exists() for p in workers)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its forkserver, counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
