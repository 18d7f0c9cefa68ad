"""What the running service holds: settings, the store, loaded models, their batchers, the decode limiter."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
import av
from fastapi import HTTPException

from app.inference import MicroBatcher
from app.jobs import JobStore
from app.settings import Settings
from model_store.manifest import Manifest
from model_store.media import MediaError, MediaLimits, Windows, load_windows
from model_store.registry import ModelStore, RegistryError
from model_store.runtime import LoadedModel, load_model

log = logging.getLogger(__name__)

# what each task's pipeline feeds and reads; checked against the manifest at startup
REQUIRED_IO: dict[str, tuple[set[str], set[str]]] = {
    "action": ({"video"}, {"logits"}),
    "avsync": ({"video", "audio"}, {"sync_logit", "cam"}),
    "separation": ({"video", "audio"}, {"on_screen", "off_screen"}),
}


@dataclass
class ServiceState:
    settings: Settings
    store: ModelStore | None = None
    models: dict[str, LoadedModel] = field(default_factory=dict)
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)
    ready: bool = False
    decode_slots: asyncio.Semaphore | None = None
    jobs: JobStore | None = None  # separation results on disk, swept after results_ttl_s
    _sweeper: asyncio.Task | None = None

    @property
    def media_limits(self) -> MediaLimits:
        s = self.settings
        return MediaLimits(max_duration_s=s.max_duration_s, max_pixels=s.max_pixels)

    async def start(self) -> None:
        """Open the store, load (sha256-verified) and warm every task's model, start its batcher; then ready.

        Any failure (missing, tampered or unloadable model) raises, so the process does not start serving.
        """
        s = self.settings
        self.decode_slots = asyncio.Semaphore(s.max_concurrent_decodes)
        self.jobs = JobStore(s.results_dir, s.results_ttl_s)
        self._sweeper = asyncio.create_task(self.jobs.run_sweeper(s.results_sweep_s), name="results-sweeper")
        self.store = store = ModelStore(s.model_root)
        tasks = s.tasks if s.tasks is not None else await anyio.to_thread.run_sync(self.store.tasks)
        if not tasks:
            log.warning("no model is published under %s; the service will not become ready", s.model_root)
        warmup = sorted({1, s.max_batch})
        for task in tasks:
            model = await anyio.to_thread.run_sync(
                lambda t=task: load_model(store, t, s.model_alias, s.providers, s.intra_op_threads, warmup)
            )
            _check_io(model.manifest)
            self.models[task] = model
            batcher = MicroBatcher(model.run, s.max_batch, s.batch_timeout_ms / 1000.0, name=task)
            await batcher.start()
            self.batchers[task] = batcher
            m = model.manifest
            log.info("serving %s: %s v%d on %s", task, m.name, m.version, model.providers)
        self.ready = bool(self.models)

    async def stop(self) -> None:
        self.ready = False
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for batcher in self.batchers.values():
            await batcher.stop()
        self.batchers.clear()
        self.models.clear()

    def model(self, task: str) -> LoadedModel:
        if task not in self.models:
            raise HTTPException(503, f"no {task} model is loaded by this service")
        return self.models[task]

    async def decode_upload(self, upload: IO[bytes], manifest: Manifest) -> Windows:
        """Copy the upload to a temporary file and decode it into the model's windows, in a worker thread,
        with at most ``max_concurrent_decodes`` decodes at a time. The file is deleted afterwards."""
        assert self.decode_slots is not None
        async with self.decode_slots:
            return await anyio.to_thread.run_sync(_decode_via_tempfile, upload, manifest, self.media_limits)


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


def decode_path(path: Path, manifest: Manifest, limits: MediaLimits) -> Windows:
    """The model's windows of a saved upload; errors never show the server's temporary path."""
    try:
        return load_windows(path, manifest.clip, limits)
    except MediaError as exc:
        raise MediaError(exc.detail.replace(str(path), "<upload>"), status=exc.status) from exc
    except (av.FFmpegError, ValueError, ArithmeticError, IndexError, OverflowError) as exc:
        # FFmpeg and PyAV meeting a file they cannot read in a way decode() does not foresee: the upload's problem
        log.warning("decoding an upload failed: %r", exc, exc_info=exc)
        raise MediaError("the file could not be decoded") from exc


def _decode_via_tempfile(upload: IO[bytes], manifest: Manifest, limits: MediaLimits) -> Windows:
    path = save_upload(upload)
    try:
        return decode_path(path, manifest, limits)
    finally:
        path.unlink(missing_ok=True)
