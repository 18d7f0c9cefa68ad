"""Mix-and-separate over a streamed talking-head manifest (``prepare``'s ``<speaker>/<video>/<clip>.mp4``): each
mixture is made from two windows decoded on their own from their files in DataLoader workers
(:func:`model_store.media.decode_window`, the service's decoder), nothing decoded into RAM up front.

- Item ``(step, k)`` is the ``k``-th mixture of step ``step``'s global batch. Everything about it (the on-screen
  clip and window, the off-screen clip of *another speaker* and its window, the level in ``mix.level_db``, the gain,
  the ``aug.*`` recording conditions) is drawn from ``numpy.random.default_rng([seed, step, k])``, and a replacement
  from ``[seed, step, k, attempt]``: a batch does not depend on the number of workers or on where a run resumed, and
  each rank decodes only its slice of the global batch (``Run.shard``).
- Voices: only clips with an audio stream (``has_audio``) take part, on screen or off; a window whose audio is
  silent (digital silence, e.g. a muted track) is redrawn and counted as ``silent``.
- A file that fails to decode is replaced by a new draw and counted (``failures``, for
  :class:`~training.data.streaming.FailureMeter`); an item that finds nothing decodable in ``retries`` draws is
  ``lost`` (zeros), which stops the run.
- Clips a decoded cache holds (``prepare --cache``) are cut from its memory-mapped arrays instead.
- The mixing and the recording conditions are the in-RAM path's (:func:`~training.separation.mixing.mix_voices`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from model_store.manifest import ClipSpec
from model_store.media import MediaError, MediaLimits, cut_window, decode_window
from training.data.cache import DecodedCache
from training.data.collection import ClipTable
from training.data.streaming import DataFailure, StreamOptions, frame_start, loader_workers
from training.separation.mixing import AugConfig, MixConfig, mix_voices

log = logging.getLogger(__name__)

SILENCE = 1e-4  # peak amplitude below which a window's audio counts as silent (-80 dBFS)
VAL_SEED = 12345  # the validation mixtures' seed (the in-RAM path's fixed validation generator's)


class Voices:
    """The clips of a manifest that can be voices (with an audio stream), ordered by speaker, and the draw of an
    (on-screen, off-screen) pair of rows from different speakers. A row without a speaker counts as spoken by its
    folder's speaker (as the in-RAM path reads an ``index.csv``). Arrays only: workers share their pages.

    Shape: rows, start, count (M,) int64: eligible manifest rows; where each row's speaker's rows begin, and how many
    """

    def __init__(self, table: ClipTable) -> None:
        self.table = table
        lo, hi = table.start_s, table.end_s
        length = np.where(np.isfinite(hi), np.minimum(hi, table.duration_s), table.duration_s) - \
            np.where(np.isfinite(lo), np.maximum(lo, 0.0), 0.0)
        rows = np.flatnonzero(table.has_audio & (length > 0))
        codes = table.speaker_ids[rows].astype(np.int64)
        unnamed = [k for k, s in enumerate(table.speakers) if not s]
        if unnamed:  # the folder as the speaker
            folders: dict[str, int] = {}
            for p in np.flatnonzero(np.isin(codes, unnamed)):
                folder = str(Path(os.fsdecode(table.paths[rows[p]])).parent)
                codes[p] = len(table.speakers) + folders.setdefault(folder, len(folders))
        order = np.argsort(codes, kind="stable")
        self.rows, codes = rows[order], codes[order]
        _, first, inverse, counts = np.unique(codes, return_index=True, return_inverse=True, return_counts=True)
        self.start, self.count = first[inverse].astype(np.int64), counts[inverse].astype(np.int64)
        self.speakers = len(counts)
        if self.speakers < 2:
            raise ValueError(f"mix-and-separate needs clips with audio of at least two speakers; {table.manifest} "
                             f"has {len(self.rows)} clips with audio of {self.speakers} speaker(s)")
        skipped = len(table) - len(self.rows)
        if skipped:
            log.info("separation: %d of %d clips are voices (%d without audio)", len(self.rows), len(table), skipped)

    def __len__(self) -> int:
        return len(self.rows)

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """(on-screen row, off-screen row of another speaker), each uniform over the rows that qualify."""
        p = int(rng.integers(len(self.rows)))
        q = int(rng.integers(len(self.rows) - self.count[p]))  # over the other speakers' rows: skip p's block
        if q >= self.start[p]:
            q += int(self.count[p])
        return int(self.rows[p]), int(self.rows[q])


class MixWindows(Dataset):
    """Items ``(step, k)``: ``(frames (T, H, W, 3) uint8, mixture (S,) float32, refs (2, S) float32 (on, off), on-screen
    row, off-screen row, failures, silent, lost)``. ``failures`` counts draws whose file failed to decode, ``silent``
    those whose on- or off-screen audio was silent; ``lost``: no draw succeeded (the tensors are zeros)."""

    def __init__(self, voices: Voices, clip: ClipSpec, mix: MixConfig, aug: AugConfig, seed: int,
                 options: StreamOptions | None = None, limits: MediaLimits | None = None,
                 cache: DecodedCache | None = None) -> None:
        self.voices, self.clip, self.mix, self.aug, self.seed = voices, clip, mix, aug, seed
        self.options, self.limits, self.cache = options or StreamOptions(), limits or MediaLimits(), cache
        self._bad: set[int] = set()  # rows this process saw fail (not decoded again)

    def __len__(self) -> int:
        return len(self.voices)

    def __getitem__(self, item: tuple[int, int]):
        step, k = (int(x) for x in item)
        table, clip = self.voices.table, self.clip
        failures = silent = 0
        for attempt in range(self.options.retries + 1):
            rng = np.random.default_rng([self.seed, step, k] + ([attempt] if attempt else []))
            on_row, off_row = self.voices.draw(rng)
            on_s = frame_start(rng, *table.span(on_row), clip)
            off_s = frame_start(rng, *table.span(off_row), clip)
            level, gain = rng.uniform(*self.mix.level_db), rng.uniform(*self.mix.gain)
            on = self._decode(on_row, on_s)
            off = self._decode(off_row, off_s) if on is not None else None
            if on is None or off is None:
                failures += 1
                continue
            if np.abs(on[1]).max() < SILENCE or np.abs(off[1]).max() < SILENCE:
                silent += 1  # no voice to separate
                continue
            # the recording conditions from the same generator, after the mixture's draws (which stay those of no aug)
            mixture, refs = mix_voices(on[1], off[1], level, gain, self.aug, clip.sample_rate,
                                       rng if self.aug.active else None)
            return (torch.from_numpy(np.ascontiguousarray(on[0])), torch.from_numpy(mixture),
                    torch.from_numpy(refs), on_row, off_row, failures, silent, False)
        return (torch.zeros((clip.frames, clip.height, clip.width, 3), dtype=torch.uint8),
                torch.zeros(clip.audio_samples), torch.zeros((2, clip.audio_samples)), -1, -1, failures, silent, True)

    def _decode(self, row: int, start: float) -> tuple[np.ndarray, np.ndarray] | None:
        """Row ``row``'s window at ``start``: (frames (T, H, W, 3) uint8, audio (S,) float32), or None if it fails."""
        if row in self._bad:
            return None
        table = self.voices.table
        cached = self.cache.get(table.key(row)) if self.cache is not None else None
        if cached is not None:
            return cut_window(cached, self.clip, start)
        path = table.path(row)
        try:
            window = decode_window(path, self.clip, start, self.limits)
        except (MediaError, OSError, ValueError) as exc:
            self._bad.add(row)
            log.warning("skipping %s (window at %.2f s): %s", path, start, exc)
            return None
        return window.video, window.audio


class StepMixes(Sampler[list[tuple[int, int]]]):
    """This rank's items (positions ``mine`` of each global batch) for steps ``start``..``end - 1``, a list per step."""

    def __init__(self, start: int, end: int, mine: list[int]) -> None:
        self.start, self.end, self.mine = start, end, list(mine)

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.end):
            yield [(step, k) for k in self.mine]


def mix_loader(dataset: MixWindows, batches: Sampler | list[list[tuple[int, int]]], options: StreamOptions,
               pin: bool, seed: int) -> DataLoader:
    """Batches of ``dataset``'s items decoded in ``options.workers`` processes (pinned for a CUDA device). ``seed``
    seeds the loader's own generator: the workers' base seed, never drawn from the global stream."""
    workers = options.workers
    return DataLoader(dataset, batch_sampler=batches, pin_memory=pin, **loader_workers(workers),
                      prefetch_factor=options.prefetch if workers else None,
                      generator=torch.Generator().manual_seed(seed))


def val_batches(voices: Voices, clip: ClipSpec, mix: MixConfig, aug: AugConfig, options: StreamOptions,
                windows: int, rank: int = 0, world_size: int = 1, cache: DecodedCache | None = None,
                batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Fixed validation mixtures, decoded once: ``windows`` items from :data:`VAL_SEED` in global batches of
    ``batch``, of which this rank decodes and keeps its share (every ``world_size``-th item). Memory is bounded by
    ``windows``, not by the size of the validation split. Items lost to bad files are left out.

    Shape: per batch (frames (B, T, H, W, 3) uint8, mixture (B, S), refs (B, 2, S))
    """
    items = [[(0, k) for k in range(s, min(s + batch, windows))][rank::world_size] for s in range(0, windows, batch)]
    items = [b for b in items if b]
    if not items:
        raise ValueError(f"data.val_windows={windows} gives process {rank} of {world_size} no validation window")
    loader = mix_loader(MixWindows(voices, clip, mix, aug, VAL_SEED, options, cache=cache), items, options,
                        pin=False, seed=VAL_SEED)
    out, failed, lost = [], 0, 0
    for frames, mixture, refs, _, _, failures, _, gone in loader:
        failed += int(failures.sum())
        lost += int(gone.sum())
        keep = ~gone
        if keep.any():
            out.append((frames[keep], mixture[keep], refs[keep]))
    if failed:
        log.warning("validation: %d window(s) failed to decode and were replaced, %d found no replacement", failed,
                    lost)
    if not out:
        raise DataFailure("no validation mixture could be decoded (or every voice was silent): check data.val")
    return out
