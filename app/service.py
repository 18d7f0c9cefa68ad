"""What the running service holds: settings, the store, loaded models, their batchers, the decode limiter."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
from fastapi import HTTPException

from app.admission import ByteBudget, ModelBudget, Refused, Stopped, work
from app.decoding import DecodePool, upload_errors
from app.inference import MicroBatcher
from app.jobs import JobRunner, JobStore
from app.malloc import tune_malloc
from app.settings import Settings
from model_store.manifest import ClipSpec, Manifest
from model_store.media import (
    Decoded,
    DecodeStopped,
    MediaError,
    MediaLimits,
    ProbeInfo,
    Windows,
    cut_windows,
    decode,
    probe,
    video_threads,
    window_starts,
)
from model_store.registry import ModelStore, RegistryError
from model_store.runtime import LoadedModel, load_model

log = logging.getLogger(__name__)

# what each task's pipeline feeds and reads; checked against the manifest at startup
REQUIRED_IO: dict[str, tuple[set[str], set[str]]] = {
    "action": ({"video"}, {"logits"}),
    "avsync": ({"video", "audio"}, {"sync_logit", "cam"}),
    "separation": ({"video", "audio"}, {"on_screen", "off_screen"}),
}


# routes answered synchronously by one model: their requests are refused before the upload is read when it is full
ROUTE_TASKS = {"/v1/actions": "action", "/v1/localization": "avsync"}


@dataclass
class ServiceState:
    settings: Settings
    store: ModelStore | None = None
    models: dict[str, LoadedModel] = field(default_factory=dict)
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)
    ready: bool = False
    decode_slots: asyncio.Semaphore | None = None
    jobs: JobStore | None = None  # separation results on disk, swept after results_ttl_s
    job_runner: JobRunner | None = None  # long requests as jobs (202 + Location), records under results_dir/jobs
    budgets: dict[str, ModelBudget] = field(default_factory=dict)  # admission: windows and requests per model
    upload_bytes: ByteBudget | None = None  # admission: request bodies held (app.admission.AdmissionMiddleware)
    stopped: dict[str, int] = field(default_factory=dict)  # requests stopped early, by "deadline" / "disconnect"
    decoding: int = 0  # decodes running now (they pick their threads by it)
    decode_pool: DecodePool | None = None  # worker processes that decode (settings.decode_processes)
    _sweeper: asyncio.Task | None = None
    _job_sweeper: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self.upload_bytes = ByteBudget(self.settings.max_upload_held_bytes)

    @property
    def media_limits(self) -> MediaLimits:
        s = self.settings
        return MediaLimits(max_duration_s=s.max_duration_s, max_pixels=s.max_pixels)

    async def start(self) -> None:
        """Open the store, load (sha256-verified) and warm every task's model, start its batcher; then ready.

        Any failure (missing, tampered or unloadable model) raises, so the process does not start serving.
        """
        s = self.settings
        tune_malloc()
        self.decode_slots = asyncio.Semaphore(s.max_concurrent_decodes)
        if s.decode_processes:
            self.decode_pool = DecodePool(s.max_concurrent_decodes)
            await self.decode_pool.start()
        self.jobs = JobStore(s.results_dir, s.results_ttl_s)
        self._sweeper = asyncio.create_task(self.jobs.run_sweeper(s.results_sweep_s), name="results-sweeper")
        self.job_runner = JobRunner(Path(s.results_dir) / "jobs", s.max_jobs, s.job_workers, s.results_ttl_s)
        await self.job_runner.start()
        self._job_sweeper = asyncio.create_task(self.job_runner.run_sweeper(s.results_sweep_s), name="jobs-sweeper")
        self.store = store = ModelStore(s.model_root)
        tasks = s.tasks if s.tasks is not None else await anyio.to_thread.run_sync(self.store.tasks)
        if not tasks:
            log.warning("no model is published under %s; the service will not become ready", s.model_root)
        warmup = sorted({1, s.max_batch})
        for task in tasks:
            model = await anyio.to_thread.run_sync(
                lambda t=task: load_model(store, t, s.model_alias, s.providers, s.intra_op_threads, warmup,
                                          s.intra_op_spinning)
            )
            _check_io(model.manifest)
            self.models[task] = model
            batcher = MicroBatcher(model.run, s.max_batch, batch_timeout_s(s, model), name=task)
            await batcher.start()
            self.batchers[task] = batcher
            self.budgets[task] = ModelBudget(task, s.max_windows_in_flight, s.max_requests_in_flight)
            m = model.manifest
            log.info("serving %s: %s v%d on %s", task, m.name, m.version, model.providers)
        self.ready = bool(self.models)

    async def stop(self) -> None:
        self.ready = False
        if self.job_runner is not None:
            await self.job_runner.stop()
        for sweeper in (self._sweeper, self._job_sweeper):
            if sweeper is not None:
                sweeper.cancel()
        self._sweeper = self._job_sweeper = None
        for batcher in self.batchers.values():
            await batcher.stop()
        self.batchers.clear()
        if self.decode_pool is not None:
            self.decode_pool.shutdown()
            self.decode_pool = None
        self.models.clear()

    def model(self, task: str) -> LoadedModel:
        if task not in self.models:
            raise HTTPException(503, f"no {task} model is loaded by this service")
        return self.models[task]

    def precheck(self, path: str) -> Refused | None:
        """Before an upload is read: a refusal if a model the route needs takes no more requests. (Jobs are not
        refused here: ``/v1/analyze`` and ``/v1/separations`` may queue one; their admission waits.)"""
        task = ROUTE_TASKS.get(path)
        budget = self.budgets.get(task) if task is not None else None
        return budget.full() if budget is not None else None

    def retry_after_s(self) -> float:
        """When a refused client might find room: the slowest model's estimate."""
        return max((b.retry_after_s() for b in self.budgets.values()), default=1.0)

    async def admit(self, manifest: Manifest, info: ProbeInfo, wait: bool = False) -> int:
        """Admit a probed video's windows to its model's budget for the current request or job (given back when it
        ends): at once or :class:`~app.admission.Refused` (503), or, with ``wait`` (jobs), when there is room.
        Returns the windows counted."""
        windows = expected_windows(info, manifest.clip, self.media_limits)
        budget = self.budgets.get(manifest.task)
        if budget is not None and work() is not None:
            if wait:
                await budget.wait_admit(windows)
            else:
                budget.admit(windows)
        return windows

    async def decode_many(self, path: Path, manifests: list[Manifest], wait: bool = False,
                          info: ProbeInfo | None = None) -> dict[str, Windows]:
        """Each model's windows of a saved upload: probe (headers only; ``info``: already probed), admit every
        model's windows (see :meth:`admit`), then decode once per distinct (fps, size, sample rate) and cut each
        model's windows from that. Decodes run in worker threads, at most ``max_concurrent_decodes`` at a time, and
        stop early if the current request's deadline passes, its client goes away or its job is cancelled."""
        assert self.decode_slots is not None
        if info is None:
            info = await anyio.to_thread.run_sync(probe_path, path, self.media_limits)
        for manifest in manifests:
            await self.admit(manifest, info, wait)
        w = work()
        # decode no further than the probe promised (a header that understates the length must not overfill memory)
        limit = self.media_limits.max_duration_s
        if math.isfinite(info.duration_s):
            limit = min(limit, info.duration_s * 1.05 + 2.0)
        limits = MediaLimits(max_duration_s=limit, max_pixels=self.settings.max_pixels)
        groups: dict[tuple, list[Manifest]] = {}
        for manifest in manifests:
            c = manifest.clip
            groups.setdefault((c.fps, c.height, c.width, c.sample_rate), []).append(manifest)
        out: dict[str, Windows] = {}
        for i, group in enumerate(groups.values()):
            async with self.decode_slots:
                if w is not None:
                    w.check()
                threads = self.decode_threads(info)
                self.decoding += 1
                try:
                    decoded = await self.decode_clip(path, group[0].clip, limits, threads)
                finally:
                    self.decoding -= 1
            for manifest in group:
                out[manifest.task] = cut_windows(decoded, manifest.clip)
            del decoded
            if w is not None:
                w.progress(0.5 * (i + 1) / len(groups))
        return out

    async def decode_clip(self, path: Path, clip: ClipSpec, limits: MediaLimits, threads: int) -> Decoded:
        """A saved upload decoded at ``clip``: in a worker process of :attr:`decode_pool`, or in a worker thread
        (``DECODE_PROCESSES`` off); stopped with the current work (:class:`~app.admission.Stopped`)."""
        w = work()
        stop = w.should_stop if w is not None else None
        try:
            if self.decode_pool is not None:
                return await self.decode_pool.decode(path, clip, limits, threads, stop,
                                                     w.deadline if w is not None else None)
            return await anyio.to_thread.run_sync(decode_file, path, clip, limits, stop, threads)
        except DecodeStopped as exc:
            if w is not None:
                w.should_stop()  # sets the reason if it was the deadline
            raise Stopped(w.reason if w is not None and w.reason else "decoding was stopped") from exc

    def decode_threads(self, info: ProbeInfo) -> int:
        """FFmpeg threads for a decode about to start: the setting, or (0) one for small frames
        (:func:`~model_store.media.video_threads`), else the cores shared among the decodes then running, this one
        included. Frame threads cost CPU (a 10-s 360p clip: about 20 % more than one thread), so they pay only when
        cores would be idle; under load, decodes running side by side fill the cores better."""
        if self.settings.decode_threads > 0:
            return self.settings.decode_threads
        if video_threads(info.width, info.height) == 1:
            return 1
        return max(1, _cores() // (self.decoding + 1))

    async def decode_saved(self, path: Path, manifest: Manifest, info: ProbeInfo | None = None) -> Windows:
        """One model's windows of a saved upload (:meth:`decode_many`)."""
        return (await self.decode_many(path, [manifest], info=info))[manifest.task]

    async def decode_upload(self, upload: IO[bytes], manifest: Manifest) -> Windows:
        """Copy the upload to a temporary file and :meth:`decode_saved` it; the file is deleted afterwards."""
        path, info = await anyio.to_thread.run_sync(save_and_probe, upload, self.media_limits)
        try:
            return await self.decode_saved(path, manifest, info)
        finally:
            path.unlink(missing_ok=True)


def batch_timeout_s(settings: Settings, model: LoadedModel) -> float:
    """The setting, or 5 ms for a model on a GPU (a batch of 16 costs about as much as one window) and 0 on CPU."""
    if settings.batch_timeout_ms is not None:
        return settings.batch_timeout_ms / 1000.0
    return 0.0 if model.providers[0] == "CPUExecutionProvider" else 0.005


def _cores() -> int:
    """The cores this process may run on (its affinity; a container's cpuset), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def expected_windows(info: ProbeInfo, clip: ClipSpec, limits: MediaLimits) -> int:
    """The windows a probed video will give (a video of unknown length counts as the longest accepted)."""
    duration = info.duration_s if math.isfinite(info.duration_s) else limits.max_duration_s
    return len(window_starts(max(duration, 0.0), clip))


def _check_io(manifest: Manifest) -> None:
    needed_in, needed_out = REQUIRED_IO.get(manifest.task, (set(), set()))
    have_in = {spec.name for spec in manifest.inputs}
    have_out = {spec.name for spec in manifest.outputs}
    if not needed_in <= have_in or not needed_out <= have_out:
        raise RegistryError(
            f"{manifest.task} v{manifest.version} has inputs {sorted(have_in)}, outputs {sorted(have_out)}; "
            f"this service needs inputs {sorted(needed_in)} and outputs {sorted(needed_out)}"
        )


def save_upload(upload: IO[bytes]) -> Path:
    """Copy an upload to a temporary file (the caller deletes it); an empty upload is a 422."""
    upload.seek(0)
    fd, name = tempfile.mkstemp(prefix="avscene-upload-")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            shutil.copyfileobj(upload, fh, 1 << 20)
            size = fh.tell()
        if size == 0:
            raise MediaError("the uploaded file is empty", status=422)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def save_and_probe(upload: IO[bytes], limits: MediaLimits) -> tuple[Path, ProbeInfo]:
    """:func:`save_upload`, then :func:`probe_path` (in one worker-thread call: a request's steps each wait for a
    thread, which on a busy machine costs a scheduler's time slice). The file is deleted if the probe refuses it."""
    path = save_upload(upload)
    try:
        return path, probe_path(path, limits)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def probe_path(path: Path, limits: MediaLimits) -> ProbeInfo:
    """A saved upload's headers, checked against ``limits``."""
    with upload_errors(path):
        return probe(path, limits)


def decode_file(path: Path, clip: ClipSpec, limits: MediaLimits, stop: Callable[[], bool] | None = None,
                threads: int = 0) -> Decoded:
    """A saved upload decoded at a clip spec's fps, size and rate; ``stop`` can end it early
    (:class:`~model_store.media.DecodeStopped`)."""
    with upload_errors(path):
        return decode(path, clip, limits, stop, threads)
