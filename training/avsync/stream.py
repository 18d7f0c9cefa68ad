"""The sync pretext over a streamed clip manifest: the same pairs as :mod:`training.avsync.pairs` draws (a window's
frames with its own audio, and with the same clip's audio shifted), each decoded on its own from its file in
DataLoader workers (:func:`model_store.media.decode_span` over both windows, one seek).

- The global batch of step ``i`` is drawn from ``numpy.random.default_rng([seed, i])``: the same on every rank,
  each rank decodes its slice (``Run.shard``), and a resumed run (or any number of workers) gets the same batches.
- Only clips with audio take part: a clip without an audio stream, or a window whose own or shifted audio is
  silent, never becomes an in-sync positive (it is replaced by another draw and counted as ``silent``).
- A window that fails to decode is replaced by another draw (``[seed, step, k, attempt]``) and counted
  (:class:`~training.data.streaming.FailureMeter`).
- Clips a decoded cache holds (``prepare --cache``) are cut from it instead of decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from model_store.manifest import ClipSpec
from model_store.media import MediaError, MediaLimits, cut_window, decode_span
from training.avsync.pairs import Pair, draw_batch, draw_pair, heldout_pairs
from training.data.cache import DecodedCache
from training.data.collection import ClipTable
from training.data.streaming import StreamOptions, loader_workers, normalize_frames

log = logging.getLogger(__name__)

SILENCE = 1e-4  # peak amplitude below which a window's audio counts as silent (-80 dBFS)


@dataclass(frozen=True)
class PairJob:
    """Decode row ``row``'s frames at ``video_s`` with its audio at ``video_s`` (in sync) and ``audio_s``
    (shifted); ``step`` and ``k`` (the pair's place in its global batch) seed any replacement."""

    step: int
    k: int
    row: int
    video_s: float
    audio_s: float
    flip: bool


@dataclass(frozen=True)
class _Span:
    duration_s: float  # what draw_pair reads


class PairSource:
    """The clips of a manifest that can make pairs (with audio, long enough for the window and the smallest
    shift), and the pairs' draws. Pairs are drawn inside each clip's labelled span."""

    def __init__(self, table: ClipTable, clip: ClipSpec, shifts: tuple[float, float]) -> None:
        self.table, self.clip, self.shifts = table, clip, shifts
        spans = [table.span(i) for i in range(len(table))]
        long_enough = np.array([hi - lo >= clip.window_s + shifts[0] for lo, hi in spans], dtype=bool)
        self.rows = np.flatnonzero(table.has_audio & long_enough)  # (M,) eligible manifest rows
        self.lo = np.array([spans[r][0] for r in self.rows], dtype=np.float64)
        self.length = np.array([spans[r][1] - spans[r][0] for r in self.rows], dtype=np.float64)
        if len(self.rows) == 0:
            raise ValueError(f"no clip of the manifest has audio and lasts {clip.window_s + shifts[0]:.2f} s (a "
                             "window and the smallest shift)")
        skipped = len(table) - len(self.rows)
        if skipped:
            log.info("pretext: %d of %d clips take part (%d without audio or too short)", len(self.rows),
                     len(table), skipped)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> _Span:  # the sequence draw_batch and heldout_pairs read
        return _Span(float(self.length[i]))

    def job(self, step: int, k: int, pair: Pair, flip: bool) -> PairJob:
        lo = float(self.lo[pair.clip])
        return PairJob(step, k, int(self.rows[pair.clip]), lo + pair.video_s, lo + pair.audio_s, flip)

    def step_jobs(self, seed: int, step: int, batch_size: int, flip: bool, other: bool,
                  mine: list[int]) -> list[PairJob]:
        """This rank's jobs (positions ``mine`` of the global batch) for optimisation step ``step``."""
        pairs, flips = draw_batch(np.random.default_rng([seed, step]), self, self.clip, self.shifts, batch_size,
                                  flip, other)
        return [self.job(step, k, pairs[k], bool(flips[k]) if flips is not None else False) for k in mine]

    def redraw(self, seed: int, job: PairJob, attempt: int) -> PairJob:
        """A replacement for ``job`` (its file failed or its audio was silent), from ``[seed, step, k, attempt]``."""
        rng = np.random.default_rng([seed, job.step + 1, job.k, attempt])  # steps count from 0; -1 is evaluation
        while True:
            ci = int(rng.integers(len(self)))
            pair = draw_pair(rng, ci, float(self.length[ci]), self.clip, self.shifts)
            if pair is not None:
                return self.job(job.step, job.k, pair, job.flip)

    def heldout_jobs(self) -> list[PairJob]:
        """One fixed pair per eligible clip, as :func:`~training.avsync.pairs.heldout_pairs` draws them."""
        return [self.job(-1, k, p, False) for k, p in enumerate(heldout_pairs(self, self.clip, self.shifts))]


class PairWindows(Dataset):
    """Items are :class:`PairJob` s: ``(frames (T, H, W, 3) uint8, in-sync audio (S,), shifted audio (S,), row,
    failures, silent, lost)``; ``lost``: no draw succeeded in ``retries`` replacements (zeros then)."""

    def __init__(self, source: PairSource, seed: int, options: StreamOptions, limits: MediaLimits | None = None,
                 retries: int | None = None, cache: DecodedCache | None = None) -> None:
        self.source, self.seed, self.options, self.cache = source, seed, options, cache
        self.limits = limits or MediaLimits()
        self.retries = options.retries if retries is None else retries
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, job: PairJob):
        failures = silent = 0
        clip = self.source.clip
        for attempt in range(self.retries + 1):
            if attempt:
                job = self.source.redraw(self.seed, job, attempt)
            got = self._decode(job)
            if got is None:
                failures += 1
                continue
            frames, own, shifted = got
            if np.abs(own).max() < SILENCE or np.abs(shifted).max() < SILENCE:
                silent += 1  # no sound to be in sync with: never a positive
                continue
            if job.flip:
                frames = frames[:, :, ::-1]
            return (torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(own), torch.from_numpy(shifted),
                    job.row, failures, silent, False)
        return (torch.zeros((clip.frames, clip.height, clip.width, 3), dtype=torch.uint8),
                torch.zeros(clip.audio_samples), torch.zeros(clip.audio_samples), job.row, failures, silent, True)

    def _decode(self, job: PairJob) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if job.row in self._bad:
            return None
        clip = self.source.clip
        cached = self.cache.get(self.source.table.key(job.row)) if self.cache is not None else None
        if cached is not None:
            frames, own = cut_window(cached, clip, job.video_s)
            return frames, own, cut_window(cached, clip, job.audio_s)[1]
        path = self.source.table.path(job.row)
        lo, hi = min(job.video_s, job.audio_s), max(job.video_s, job.audio_s) + clip.window_s
        try:
            span = decode_span(path, clip, lo, hi, self.limits)
            frames, own = span.window(clip, job.video_s)
            _, shifted = span.window(clip, job.audio_s)
        except (MediaError, OSError, ValueError) as exc:
            self._bad.add(job.row)
            log.warning("skipping %s (pair at %.2f/%.2f s): %s", path, job.video_s, job.audio_s, exc)
            return None
        return frames, own, shifted


class StepJobs(Sampler[list[PairJob]]):
    """This rank's jobs for steps ``start``..``end - 1``, one list per step."""

    def __init__(self, source: PairSource, seed: int, start: int, end: int, batch_size: int, flip: bool,
                 other: bool, mine: list[int]) -> None:
        self.source, self.seed, self.start, self.end = source, seed, start, end
        self.batch_size, self.flip, self.other, self.mine = batch_size, flip, other, mine

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self) -> Iterator[list[PairJob]]:
        for step in range(self.start, self.end):
            yield self.source.step_jobs(self.seed, step, self.batch_size, self.flip, self.other, self.mine)


def pair_loader(dataset: PairWindows, batches: Sampler | list[list[PairJob]], workers: int, prefetch: int,
                pin: bool, seed: int) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, pin_memory=pin, **loader_workers(workers),
                      prefetch_factor=prefetch if workers else None,
                      generator=torch.Generator().manual_seed(seed))


def model_inputs(batch, clip: ClipSpec, device: torch.device,
                 other: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A streamed batch as ``pair_batch`` lays it out: frames normalised on the device, the in-sync tracks, then
    the shifted ones (then each pair's neighbour's in-sync track with ``other``), and their labels.

    Shape: video (N, 3, T, H, W) float32, audio (kN, S), label (kN,), k = 2 (3 with ``other``)
    """
    frames, own, shifted = batch[:3]
    video = normalize_frames(frames.to(device, non_blocking=True), clip)
    tracks = [own, shifted] + ([own.roll(-1, 0)] if other else [])
    audio = torch.cat(tracks).to(device, non_blocking=True)
    n = len(own)
    label = torch.cat([torch.ones(n)] + [torch.zeros(n)] * (len(tracks) - 1)).to(device)
    return video, audio, label
