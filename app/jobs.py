"""Separation results kept on disk (:class:`JobStore`), and long requests run as jobs (:class:`JobRunner`).

Separation results: kept for a configured time and then removed.

Layout: ``<root>/<id>/{job.json, on_screen.wav, off_screen.wav}``, plus ``on_screen.flac`` / ``off_screen.flac``
once asked for (encoded from the WAV on the first download: lossless, the same 16-bit samples, and most clients
never ask, so the answer does not wait for it). A job is written into ``<root>/.staging-<id>`` (files fsynced) and
renamed into place, so a reader sees a whole job or none; a FLAC is written aside and renamed into place too.
``get`` refuses an expired job (and removes it); :meth:`JobStore.sweep` removes every expired job and runs
periodically in the service (:meth:`JobStore.run_sweeper`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anyio
import numpy as np
import soundfile as sf

from app.admission import Stopped, Work, current_work
from app.inference import STOP_GRACE_S, task_stacks
from model_store.media import MediaError

log = logging.getLogger(__name__)

TRACKS = ("on_screen", "off_screen")
FORMATS = {"wav": ("WAV", "PCM_16", "audio/wav"), "flac": ("FLAC", "PCM_16", "audio/flac")}
STORED = "wav"  # written with the job; the other formats are encoded from it when first asked for
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
        """Write both tracks (WAV) and the job record atomically; returns the job."""
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
            fmt, subtype, _ = FORMATS[STORED]
            written = []
            for name, wave in tracks.items():
                audio = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
                written.append(staging / f"{name}.{STORED}")
                with open(written[-1], "wb") as fh:  # libsndfile fsyncs a file it opened itself: once is enough
                    sf.write(fh, audio, job.sample_rate, format=fmt, subtype=subtype)
            written.append(staging / "job.json")
            written[-1].write_text(json.dumps(asdict(job)))
            for path in written:  # all written first: the first fsync's journal commit takes most of the others along
                _fsync(path)
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
        """A track's file in format ``ext``, encoded from the stored WAV (and kept) the first time it is asked for."""
        if track not in TRACKS or ext not in FORMATS:
            raise JobNotFound(f"{job_id}/{track}.{ext}")
        self.get(job_id)
        path = self._dir(job_id) / f"{track}.{ext}"
        if not path.exists():
            self._encode(path.with_suffix(f".{STORED}"), path, ext)
        return path

    def _encode(self, source: Path, path: Path, ext: str) -> None:
        """``source`` re-encoded as ``ext`` at ``path``, written aside and renamed into place (concurrent first
        downloads each write their own copy; the last rename wins, with the same content)."""
        fmt, subtype, _ = FORMATS[ext]
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        try:
            data, rate = sf.read(source, dtype="int16")  # the stored 16-bit samples, unchanged
            with open(aside, "wb") as fh:
                sf.write(fh, data, rate, format=fmt, subtype=subtype)
            os.replace(aside, path)
        except FileNotFoundError as exc:  # deleted (or expired and swept) meanwhile
            raise JobNotFound(path.name) from exc
        finally:
            aside.unlink(missing_ok=True)

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


# ---------------------------------------------------------------- long work as jobs (202 + Location)

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
JobFn = Callable[[Work, Path], Awaitable[dict]]  # (the job's Work, its upload) -> the result's JSON


class JobsFull(Exception):
    """The job queue holds its maximum of queued and running jobs."""


@dataclass
class JobRecord:
    """A job's state as clients see it; ``result`` (the answer's JSON) is set only together with ``done``."""

    id: str
    kind: str
    status: str
    created_at: float
    progress: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    detail: str | None = None
    result: dict | None = None


class JobRunner:
    """Long requests as jobs: a bounded FIFO of jobs run by ``workers`` tasks, each job's record on disk.

    Layout: ``<root>/<id>.json`` (the record, replaced atomically: written aside, fsynced, renamed) and
    ``<root>/<id>.upload`` (the upload, until the job ends). A record reads ``done`` only once its whole result is
    in it. At start (:meth:`recover`), jobs a previous process left ``queued`` or ``running`` are marked
    ``failed`` and their uploads removed: their work died with that process. Finished records are removed
    ``ttl_s`` after they finish.
    """

    def __init__(self, root: str | Path, max_jobs: int, workers: int, ttl_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.max_jobs = max_jobs
        self.workers = workers
        self.ttl_s = ttl_s
        self.clock = clock
        self._records: dict[str, JobRecord] = {}
        self._work: dict[str, Work] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._queue: asyncio.Queue[tuple[str, JobFn]] | None = None
        self._workers: list[asyncio.Task] = []

    # -- records
    def _path(self, job_id: str) -> Path:
        if not _ID.match(job_id):
            raise JobNotFound(job_id)
        return self.root / f"{job_id}.json"

    def upload_path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.upload"

    def _save(self, record: JobRecord) -> None:
        path = self._path(record.id)
        tmp = path.with_suffix(f".tmp-{uuid.uuid4().hex[:8]}")
        with open(tmp, "w") as fh:
            json.dump(asdict(record), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def get(self, job_id: str) -> JobRecord:
        if job_id in self._records:
            return self._records[job_id]
        try:
            return JobRecord(**json.loads(self._path(job_id).read_text()))
        except (FileNotFoundError, ValueError, TypeError) as exc:
            raise JobNotFound(job_id) from exc

    def active(self) -> int:
        return sum(r.status in ("queued", "running") for r in self._records.values())

    def recover(self) -> int:
        """Mark the jobs a previous process left unfinished as failed; returns how many."""
        self.root.mkdir(parents=True, exist_ok=True)
        failed = 0
        for path in self.root.iterdir():
            if path.name.endswith(".upload") or ".tmp-" in path.name:
                path.unlink(missing_ok=True)
                continue
            if not (path.suffix == ".json" and _ID.match(path.stem)):
                continue
            try:
                record = JobRecord(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if record.status not in FINISHED:
                was = record.status
                record.status, record.finished_at, record.result = "failed", self.clock(), None
                record.detail = f"the service restarted while the job was {was}; submit it again"
                self._save(record)
                failed += 1
        if failed:
            log.warning("marked %d job(s) failed: the service restarted before they finished", failed)
        return failed

    def sweep(self) -> int:
        """Remove records that finished more than ``ttl_s`` ago; returns how many."""
        if not self.root.is_dir():
            return 0
        now, removed = self.clock(), 0
        for path in self.root.glob("*.json"):
            try:
                record = JobRecord(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if record.status in FINISHED and record.finished_at is not None and now - record.finished_at > self.ttl_s:
                path.unlink(missing_ok=True)
                self._records.pop(record.id, None)
                removed += 1
        return removed

    # -- running
    async def start(self) -> None:
        await anyio.to_thread.run_sync(self.recover)
        self._queue = asyncio.Queue()
        self._workers = [asyncio.create_task(self._serve(), name=f"jobs-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        """Cancel the workers and every unfinished job; their records say failed (the service stopped)."""
        for task in self._workers:
            task.cancel()
        for job_id, task in list(self._tasks.items()):
            self._work[job_id].cancel("the service stopped while the job was running")
            task.cancel()
        # bounded: a task that does not end within STOP_GRACE_S is left behind (logged), the service still stops
        tasks = [*self._workers, *self._tasks.values()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
            if late:
                log.warning("%d job task(s) did not stop within %g s; left behind:\n%s", len(late), STOP_GRACE_S,
                            task_stacks(late))
        self._workers.clear()
        for record in self._records.values():
            if record.status not in FINISHED:
                self._finish(record, "failed", f"the service stopped while the job was {record.status}")

    def submit(self, kind: str, run: JobFn, upload: Path | None = None) -> JobRecord:
        """Queue ``run`` as a job (``upload``, if given, moves into the job's keeping); :class:`JobsFull` if the
        queue is full."""
        if self._queue is None:
            raise JobsFull("the job queue is not running")
        if self.active() >= self.max_jobs:
            raise JobsFull(f"{self.active()} jobs are queued or running (at most {self.max_jobs})")
        record = JobRecord(id=uuid.uuid4().hex, kind=kind, status="queued", created_at=self.clock())
        if upload is not None:
            shutil.move(upload, self.upload_path(record.id))
        self._save(record)
        self._records[record.id] = record
        self._queue.put_nowait((record.id, run))
        log.info("job %s (%s) queued", record.id, kind)
        return record

    async def cancel(self, job_id: str) -> JobRecord:
        """Stop a queued or running job; it ends ``cancelled``."""
        record = self.get(job_id)
        if record.status in FINISHED:
            return record
        if job_id in self._tasks:
            self._work[job_id].cancel("cancelled by the client")
            task = self._tasks[job_id]
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # the request asking is itself being cancelled
                    raise
            except Exception:  # noqa: S110 - the job's own failure: its worker records it
                pass
        if record.status not in FINISHED:
            self._finish(record, "cancelled", "cancelled by the client")
        return record

    def delete(self, job_id: str) -> None:
        """Remove a finished job's record."""
        record = self.get(job_id)
        if record.status not in FINISHED:
            raise ValueError(f"job {job_id} is {record.status}; cancel it first")
        self._path(job_id).unlink(missing_ok=True)
        self._records.pop(job_id, None)

    def _finish(self, record: JobRecord, status: str, detail: str | None = None, result: dict | None = None) -> None:
        record.status, record.detail, record.result, record.finished_at = status, detail, result, self.clock()
        if status == "done":
            record.progress = 1.0
        self.upload_path(record.id).unlink(missing_ok=True)
        self._save(record)
        log.info("job %s (%s) %s%s", record.id, record.kind, status, f": {detail}" if detail else "")

    def _settle(self, record: JobRecord, task: asyncio.Task, work_: Work) -> None:
        """Finish ``record`` as its ended ``task`` ended (unless a cancel already finished it)."""
        if record.status in FINISHED:
            return
        if task.cancelled():
            self._finish(record, "cancelled", work_.reason or "cancelled")
            return
        exc = task.exception()
        if exc is None:
            self._finish(record, "done", result=task.result())
        elif isinstance(exc, MediaError):
            self._finish(record, "failed", exc.detail)
        elif isinstance(exc, Stopped):
            self._finish(record, "cancelled" if "client" in exc.reason else "failed", exc.reason)
        else:
            log.error("job %s (%s) failed", record.id, record.kind, exc_info=exc)
            self._finish(record, "failed", "an internal error occurred; it has been logged")

    async def _serve(self) -> None:
        assert self._queue is not None
        while True:
            job_id, run = await self._queue.get()
            record = self._records.get(job_id)
            if record is None or record.status != "queued":
                continue  # cancelled while queued
            work_ = Work(on_progress=lambda f, r=record: setattr(r, "progress", round(max(r.progress, f), 4)))
            self._work[job_id] = work_
            record.status, record.started_at = "running", self.clock()
            self._save(record)
            # the job runs in a context of its own: its Work, not the submitting request's
            context = contextvars.copy_context()
            context.run(current_work.set, work_)
            task = asyncio.get_running_loop().create_task(run(work_, self.upload_path(job_id)), context=context)
            self._tasks[job_id] = task
            try:
                with contextlib.suppress(Exception):  # the job's own failure: settled from the task below
                    await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():  # the service stops while the job runs: stop() cancels and finishes it
                    raise
                # the job ended (done, failed or cancelled by its client) just as this worker was cancelled: its
                # outcome stands, and the worker still ends if the cancellation was its own (the service stopping)
                self._settle(record, task, work_)
                if asyncio.current_task().cancelling():
                    raise
            else:
                self._settle(record, task, work_)
            finally:
                work_.release()
                self._tasks.pop(job_id, None)
                self._work.pop(job_id, None)

    async def run_sweeper(self, interval_s: float) -> None:
        while True:
            try:
                await anyio.to_thread.run_sync(self.sweep)
            except Exception:
                log.exception("sweeping jobs in %s failed", self.root)
            await asyncio.sleep(interval_s)
