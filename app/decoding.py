"""Decodes in worker processes.

PyAV holds the GIL through much of a decode: demuxing, the RGB scaling, building and pulling the audio filter
graph (``py-spy --gil`` on the server under 8 clients: the GIL held 45 % of the time, half of it by decodes). Two
decodes in threads of the server process therefore wait on each other and on the event loop, and the server did
not get past about 1.65 of 2 cores. In worker processes they do not (``benchmarks/serve_load.py``, README).

:class:`DecodePool` runs :func:`~model_store.media.decode` in ``workers`` processes (forkserver: a small process
that has imported the media code forks each worker; nothing of the server's models or sockets is inherited). A
decode is stopped through a flag in shared memory, one per slot, that the worker polls once per packet, with the
request's deadline; a client that goes away (the awaiting task is cancelled) sets it too. A worker that dies (a
decoder crash) breaks the pool: it is replaced, the decode is tried once more on the new one, and a file that kills
that one too is answered 422.

Errors cross the process boundary as :class:`~model_store.media.MediaError` (status and detail, the server's
temporary path removed: :func:`upload_errors`) or :class:`~model_store.media.DecodeStopped`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import av

from app.malloc import tune_malloc
from model_store.manifest import ClipSpec
from model_store.media import Decoded, DecodeStopped, MediaError, MediaLimits, decode

log = logging.getLogger(__name__)

SLOTS = 64  # stop flags: more than the decodes that can be submitted or still stopping at once
POLL_S = 0.05  # how often a waiting request checks whether its decode should stop (job cancelled)


@contextlib.contextmanager
def upload_errors(path: Path) -> Iterator[None]:
    """Media errors without the server's temporary path; unforeseen decoder failures as 422, not 500."""
    try:
        yield
    except MediaError as exc:
        raise MediaError(exc.detail.replace(str(path), "<upload>"), status=exc.status) from exc
    except (av.FFmpegError, ValueError, ArithmeticError, IndexError, OverflowError) as exc:
        # FFmpeg and PyAV meeting a file in a way decode() does not foresee: the upload's problem
        log.warning("decoding an upload failed: %r", exc, exc_info=exc)
        raise MediaError("the file could not be decoded") from exc


# ------------------------------------------------------------------------------------------- in the worker

_flags = None  # the pool's stop flags, set in each worker by _init


def _init(flags, server_pid: int) -> None:
    global _flags
    _flags = flags
    tune_malloc()  # a long video's frames are returned to the system once sent, as in the server
    threading.Thread(target=_exit_with, args=(server_pid,), name="server-watch", daemon=True).start()


def _exit_with(server_pid: int) -> None:
    """End this worker when the server process ends, however it ends (a worker outliving a killed server was seen
    idle for good, with its forkserver)."""
    try:
        fd = os.pidfd_open(server_pid)
    except (AttributeError, OSError):  # no pidfd here: look every second
        while True:
            time.sleep(1.0)
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
    else:
        select.select([fd], [], [])  # readable once the process has ended
    os._exit(0)


def _decode_in_worker(slot: int, path: Path, clip: ClipSpec, limits: MediaLimits, threads: int,
                      deadline: float | None) -> Decoded:
    """Runs in a worker: :func:`decode`, stopped by the slot's flag or the deadline (``time.monotonic`` is one
    clock for every process of the machine)."""
    flags = _flags
    assert flags is not None

    def stop() -> bool:
        return flags[slot] != 0 or (deadline is not None and time.monotonic() > deadline)

    with upload_errors(path):
        return decode(path, clip, limits, stop, threads)


# ------------------------------------------------------------------------------------------- in the server

class DecodePool:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["model_store.media"])
        self._flags = self._ctx.Array("b", SLOTS, lock=False)
        self._free = list(range(SLOTS))
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0  # pools replaced after a worker died
        self.stopped = 0  # decodes that ended early, stopped by their flag or deadline

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=self._ctx, initializer=_init,
                                             initargs=(self._flags, os.getpid()))
        return self._pool

    async def start(self) -> None:
        """Start the workers now (not on the first request) and check that they run: a server started from a main
        module that multiprocessing cannot import again fails here, at startup, not on every decode."""
        pool = self._executor()
        await asyncio.gather(*(asyncio.wrap_future(pool.submit(os.getpid)) for _ in range(self.workers)))

    def worker_pids(self) -> list[int]:
        pool = self._pool
        return list(pool._processes) if pool is not None and pool._processes else []  # noqa: SLF001

    def shutdown(self) -> None:
        for slot in range(SLOTS):
            self._flags[slot] = 1
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def decode(self, path: Path, clip: ClipSpec, limits: MediaLimits, threads: int,
                     should_stop: Callable[[], bool] | None = None, deadline: float | None = None) -> Decoded:
        """``path`` decoded at ``clip`` in a worker. Raises :class:`MediaError` (the file's problem, 422 by
        default) or :class:`~model_store.media.DecodeStopped` (``should_stop`` said so, the deadline passed, or the
        caller was cancelled)."""
        for attempt in (1, 2):
            pool = self._executor()
            try:
                return await self._run(pool, path, clip, limits, threads, should_stop, deadline)
            except BrokenProcessPool:
                if self._pool is pool:  # the first caller to see it replaces it
                    self._pool = None
                    self.restarts += 1
                    pool.shutdown(wait=False, cancel_futures=True)
                    log.warning("a decode worker died; the pool is replaced (attempt %d for %s)", attempt, path.name)
        raise MediaError("the file could not be decoded (the decoder failed on it)")

    def _done(self, slot: int, stopped: bool) -> None:
        self._free.append(slot)
        self.stopped += stopped

    async def _run(self, pool: ProcessPoolExecutor, path: Path, clip: ClipSpec, limits: MediaLimits, threads: int,
                   should_stop: Callable[[], bool] | None, deadline: float | None) -> Decoded:
        slot = self._free.pop()
        self._flags[slot] = 0
        loop = asyncio.get_running_loop()
        try:
            future: Future[Decoded] = pool.submit(_decode_in_worker, slot, path, clip, limits, threads, deadline)
        except BaseException:
            self._free.append(slot)
            raise

        def give_back(done: Future) -> None:
            stopped = not done.cancelled() and isinstance(done.exception(), DecodeStopped)
            with contextlib.suppress(RuntimeError):  # the loop has closed (the service stopped)
                loop.call_soon_threadsafe(self._done, slot, stopped)

        # the slot is reused only once its worker is done with it (a stopped decode ends at its next packet)
        future.add_done_callback(give_back)
        waiting = asyncio.wrap_future(future)
        try:
            if should_stop is None:  # nothing to poll: cancellation and the deadline stop it without us
                return await waiting
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=POLL_S)
                if done:
                    return waiting.result()
                if should_stop():
                    self._flags[slot] = 1
        except asyncio.CancelledError:
            self._flags[slot] = 1
            waiting.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody reads it now
            raise
