"""On-disk store of separation results, kept for a configured time and then removed.

Layout: ``<root>/<id>/{job.json, on_screen.wav, off_screen.wav, on_screen.flac, off_screen.flac}``. A job is
written into ``<root>/.staging-<id>`` (files fsynced) and renamed into place, so a reader sees a whole job or
none. ``get`` refuses an expired job (and removes it); :meth:`JobStore.sweep` removes every expired job and
runs periodically in the service (:meth:`JobStore.run_sweeper`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anyio
import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

TRACKS = ("on_screen", "off_screen")
FORMATS = {"wav": ("WAV", "PCM_16", "audio/wav"), "flac": ("FLAC", "PCM_16", "audio/flac")}
_ID = re.compile(r"^[0-9a-f]{32}$")


class JobNotFound(LookupError):
    """No such job (never existed, deleted, or swept after expiry)."""


class JobExpired(LookupError):
    """The job existed but its retention time has passed; it is being removed."""


@dataclass
class Job:
    id: str
    model: dict
    sample_rate: int
    duration_s: float
    samples: int
    has_audio: bool
    created_at: float
    expires_at: float
    hide: list[float] | None = None
    extra: dict = field(default_factory=dict)


class JobStore:
    def __init__(self, root: str | Path, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.ttl_s = float(ttl_s)
        self.clock = clock

    def _dir(self, job_id: str) -> Path:
        if not _ID.match(job_id):
            raise JobNotFound(job_id)
        return self.root / job_id

    def create(self, tracks: dict[str, np.ndarray], sample_rate: int, *, model: dict, duration_s: float,
               has_audio: bool, hide: list[float] | None = None) -> Job:
        """Write both tracks (wav and flac) and the job record atomically; returns the job."""
        self.root.mkdir(parents=True, exist_ok=True)
        now = self.clock()
        samples = {len(v) for v in tracks.values()}
        if set(tracks) != set(TRACKS) or len(samples) != 1:
            raise ValueError(f"need equally long tracks {TRACKS}, got { {k: len(v) for k, v in tracks.items()} }")
        job = Job(id=uuid.uuid4().hex, model=model, sample_rate=int(sample_rate), duration_s=float(duration_s),
                  samples=samples.pop(), has_audio=has_audio, created_at=now, expires_at=now + self.ttl_s,
                  hide=list(hide) if hide is not None else None)
        staging = self.root / f".staging-{job.id}"
        staging.mkdir()
        try:
            for name, wave in tracks.items():
                audio = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
                for ext, (fmt, subtype, _) in FORMATS.items():
                    path = staging / f"{name}.{ext}"
                    sf.write(path, audio, job.sample_rate, format=fmt, subtype=subtype)
                    _fsync(path)
            (staging / "job.json").write_text(json.dumps(asdict(job)))
            _fsync(staging / "job.json")
            os.rename(staging, self.root / job.id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return job

    def get(self, job_id: str) -> Job:
        path = self._dir(job_id) / "job.json"
        try:
            job = Job(**json.loads(path.read_text()))
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise JobNotFound(job_id) from exc
        if self.clock() >= job.expires_at:
            self.delete(job_id)
            raise JobExpired(job_id)
        return job

    def track_path(self, job_id: str, track: str, ext: str) -> Path:
        if track not in TRACKS or ext not in FORMATS:
            raise JobNotFound(f"{job_id}/{track}.{ext}")
        self.get(job_id)
        return self._dir(job_id) / f"{track}.{ext}"

    def delete(self, job_id: str) -> bool:
        path = self._dir(job_id)
        if not path.is_dir():
            return False
        trash = self.root / f".trash-{job_id}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, trash)  # gone for readers at once, then removed
        except FileNotFoundError:
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def sweep(self) -> int:
        """Remove expired jobs and stale staging/trash directories; returns how many jobs were removed."""
        if not self.root.is_dir():
            return 0
        now, removed = self.clock(), 0
        for path in self.root.iterdir():
            if path.name.startswith((".staging-", ".trash-")):
                with contextlib.suppress(OSError):
                    if now - path.stat().st_mtime > max(self.ttl_s, 600.0):
                        shutil.rmtree(path, ignore_errors=True)
                continue
            if not _ID.match(path.name):
                continue
            try:
                expires = json.loads((path / "job.json").read_text())["expires_at"]
            except (OSError, ValueError, KeyError):
                continue
            if now >= expires and self.delete(path.name):
                removed += 1
        if removed:
            log.info("removed %d expired separation job(s)", removed)
        return removed

    async def run_sweeper(self, interval_s: float) -> None:
        """Sweep every ``interval_s`` seconds until cancelled."""
        while True:
            try:
                await anyio.to_thread.run_sync(self.sweep)
            except Exception:  # a failed sweep must not end the sweeper
                log.exception("sweeping %s failed", self.root)
            await asyncio.sleep(interval_s)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
