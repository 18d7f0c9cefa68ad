"""Streaming window datasets over a clip manifest: each item seeks to its window and decodes only that
(:func:`model_store.media.decode_window`, the service's decoder), in DataLoader worker processes.

- **Randomness**: an item's window (and any replacement for a file that fails) is drawn from
  ``numpy.random.default_rng([seed, epoch, index, attempt])``, so a batch does not depend on the number of
  workers, on which worker decodes it, or on where a run was resumed. :func:`seed_worker` seeds numpy and
  ``random`` per worker from torch's worker seed for anything else.
- **uint8 out**: items hold frames as uint8 ``(T, H, W, 3)``; batches go to the device pinned and are normalised
  there (:func:`normalize_frames`), a quarter of the bytes of float32 frames.
- **Bad files**: a window that cannot be decoded is replaced by another clip's (up to ``retries`` times) and
  counted; :class:`FailureMeter` stops the run, on every rank at once, when the share of failed windows passes
  ``max_failure_rate`` (or a window finds no decodable replacement at all).
- **Memory**: the dataset holds the manifest as numpy arrays (:class:`~training.data.collection.ClipTable`), so
  forked workers share its pages.
- **Decoded cache**: with a cache beside the manifest (``prepare --cache MODEL``, :mod:`training.data.cache`), the
  clips it holds are cut from its memory-mapped arrays instead (the same windows, without decoding).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from model_store.manifest import ClipSpec
from model_store.media import MediaError, MediaLimits, Window, cut_window, decode_span, decode_window, window_starts
from training.data.cache import DecodedCache
from training.data.collection import ClipTable, MultiHot
from training.data.workers import worker_context

log = logging.getLogger(__name__)


@dataclass
class StreamOptions:
    """How a trainer streams a manifest (``stream.*`` in its config)."""

    workers: int = 2  # DataLoader worker processes that seek and decode windows (0: in the training process)
    prefetch: int = 2  # batches each worker decodes ahead
    retries: int = 8  # replacement windows tried for one that fails, before it counts as lost
    max_failure_rate: float = 0.05  # the run stops when more than this share of windows failed to decode ...
    failure_grace: int = 200  # ... once this many windows were drawn (a lost window stops it at once)
    cache: bool = True  # cut windows from prepare's decoded cache of the run's clip spec when there is one


class DataFailure(RuntimeError):
    """Too many windows of the training data could not be decoded."""


def seed_worker(worker_id: int) -> None:  # noqa: ARG001 - DataLoader's worker_init_fn signature
    """DataLoader ``worker_init_fn``: numpy's and ``random``'s global generators seeded from torch's seed for this
    worker (the loader's base seed + worker id), and one torch thread per worker."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


def loader_workers(workers: int) -> dict[str, Any]:
    """DataLoader keywords for ``workers`` decoding processes (none: decode in the calling process): each seeded by
    :func:`seed_worker` and forked from the fork server (:mod:`training.data.workers`)."""
    return {"num_workers": workers, "worker_init_fn": seed_worker if workers else None,
            "multiprocessing_context": worker_context() if workers else None}


def normalize_frames(video: torch.Tensor, spec: ClipSpec) -> torch.Tensor:
    """uint8 frames -> float32 model input, normalised as the spec says, on the frames' device; the same arithmetic
    as :func:`model_store.media.normalize_video`.

    Shape: (..., T, H, W, 3) uint8 -> (..., 3, T, H, W) float32
    """
    x = video.to(torch.float32) * (1.0 / 255.0)
    mean = torch.tensor(spec.pixel_mean, dtype=torch.float32, device=video.device)
    std = torch.tensor(spec.pixel_std, dtype=torch.float32, device=video.device)
    x = (x - mean) / std
    return x.movedim(-1, -4).contiguous()


def find_cache(table: ClipTable, spec: ClipSpec, options: StreamOptions | None = None) -> DecodedCache | None:
    """The decoded cache of ``table``'s manifest at ``spec`` (``prepare --cache``), if one was written (and
    ``options.cache`` allows it)."""
    if table.manifest is None or (options is not None and not options.cache):
        return None
    cache = DecodedCache.find(table.manifest, spec)
    if cache is not None:
        log.info("reading %d decoded clips from %s", len(cache), cache.root)
    return cache


def as_targets(targets: np.ndarray | MultiHot) -> np.ndarray | MultiHot:
    """Class indices as an array; multi-hot targets as they are (built per row, never as an N x K matrix)."""
    return targets if isinstance(targets, MultiHot) else np.asarray(targets)


def window_draws(seed: int, epoch: int, i: int, retries: int, table: ClipTable, spec: ClipSpec
                 ) -> Iterator[tuple[int, float]]:
    """Item ``i``'s draws, ``(row, window start)``: its own row first, then up to ``retries`` replacement rows, each
    from ``numpy.random.default_rng([seed, epoch, i, attempt])`` (no ``attempt`` for the first), so an item's windows
    depend on nothing but its key."""
    for attempt in range(retries + 1):
        rng = np.random.default_rng([seed, epoch, int(i)] + ([attempt] if attempt else []))
        row = int(i) if attempt == 0 else int(rng.integers(len(table)))
        yield row, frame_start(rng, *table.span(row), spec)


def frame_start(rng: np.random.Generator, lo: float, hi: float, spec: ClipSpec) -> float:
    """A random window start in the span ``[lo, hi]``, in whole frames from ``lo`` (audio and frames stay on one
    grid): the rule the in-RAM :class:`~training.data.datasets.WindowDataset` draws with."""
    span = max(0.0, hi - lo - spec.window_s)
    return lo + math.floor(rng.uniform(0, span) * spec.fps) / spec.fps


class StreamingWindows(Dataset):
    """One random window of clip ``i`` per item, decoded from its file on demand.

    Items: ``(video (T, H, W, 3) uint8, audio (S,) float32, target, row int64, failures int64, lost bool)``:
    ``target`` is the row's class index (int64), or its multi-hot vector (K,) float32 when ``targets`` is a
    :class:`~training.data.collection.MultiHot`; ``row`` is the manifest row the window came from (``i`` unless it
    was replaced), ``failures`` how many draws failed before it, ``lost`` whether none succeeded (then the tensors
    are zeros).
    """

    def __init__(self, table: ClipTable, spec: ClipSpec, targets: np.ndarray | MultiHot, seed: int = 0,
                 options: StreamOptions | None = None, limits: MediaLimits | None = None,
                 cache: DecodedCache | None = None) -> None:
        if len(targets) != len(table):
            raise ValueError(f"{len(targets)} targets for {len(table)} clips")
        self.table, self.spec, self.targets, self.seed = table, spec, as_targets(targets), seed
        self.options, self.limits, self.cache = options or StreamOptions(), limits or MediaLimits(), cache
        self.epoch = 0
        self._bad: set[int] = set()  # rows this process saw fail (not decoded again)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        failures = 0
        for row, start in window_draws(self.seed, self.epoch, i, self.options.retries, self.table, self.spec):
            window = self._decode(row, start)
            if window is None:
                failures += 1
                continue
            return (torch.from_numpy(window.video), torch.from_numpy(window.audio),
                    torch.as_tensor(self.targets[row]), row, failures, False)
        spec = self.spec
        return (torch.zeros((spec.frames, spec.height, spec.width, 3), dtype=torch.uint8),
                torch.zeros(spec.audio_samples), torch.as_tensor(self.targets[int(i)]), int(i), failures, True)

    def _decode(self, row: int, start: float) -> Window | None:
        if row in self._bad:
            return None
        cached = self.cache.get(self.table.key(row)) if self.cache is not None else None
        if cached is not None:
            video, audio = cut_window(cached, self.spec, start)
            return Window(video=video, audio=audio, start_s=start, has_audio=cached.has_audio)
        path = self.table.path(row)
        try:
            return decode_window(path, self.spec, start, self.limits)
        except (MediaError, OSError, ValueError) as exc:
            self._bad.add(row)
            log.warning("skipping %s (window at %.2f s): %s", path, start, exc)
            return None


class ClipWindows(Dataset):
    """Evaluation: every window the service would cut from clip ``i`` (its labelled span, when it has one), in one
    seek-and-decode per clip. Items: ``(video (W, T, H, W, 3) uint8, audio (W, S) float32, target, row, lost)``
    (``target`` as :class:`StreamingWindows` gives it); batch them with :func:`cat_clip_windows`."""

    def __init__(self, table: ClipTable, spec: ClipSpec, targets: np.ndarray | MultiHot,
                 limits: MediaLimits | None = None, cache: DecodedCache | None = None) -> None:
        self.table, self.spec, self.targets = table, spec, as_targets(targets)
        self.limits, self.cache = limits or MediaLimits(), cache

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        lo, hi = self.table.span(i)
        path, spec = self.table.path(i), self.spec
        starts = lo + window_starts(hi - lo, spec)
        cached = self.cache.get(self.table.key(i)) if self.cache is not None else None
        try:
            if cached is not None:
                pairs = [cut_window(cached, spec, float(s)) for s in starts]
            else:
                span = decode_span(path, spec, lo, max(hi, lo + spec.window_s), self.limits)
                pairs = [span.window(spec, float(s)) for s in starts]
        except (MediaError, OSError, ValueError) as exc:
            log.warning("evaluation skips %s: %s", path, exc)
            return (torch.zeros((0, spec.frames, spec.height, spec.width, 3), dtype=torch.uint8),
                    torch.zeros((0, spec.audio_samples)), torch.as_tensor(self.targets[i]), i, True)
        video = torch.from_numpy(np.stack([v for v, _ in pairs]))
        audio = torch.from_numpy(np.stack([a for _, a in pairs]))
        return video, audio, torch.as_tensor(self.targets[i]), i, False


def cat_clip_windows(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Clips' windows as one batch of windows: ``(video (N, T, H, W, 3) uint8, audio (N, S), target (N,) or (N, K)
    multi-hot, clip row (N,), lost clips)``."""
    counts = [len(v) for v, *_ in items]
    video = torch.cat([v for v, *_ in items])
    audio = torch.cat([a for _, a, *_ in items])
    target = torch.cat([t.expand(n, *t.shape) for (_, _, t, *_), n in zip(items, counts, strict=True)])
    rows = torch.repeat_interleave(torch.tensor([r for *_, r, _ in items]), torch.tensor(counts))
    return video, audio, target, rows, sum(bool(lost) for *_, lost in items)


class FailureMeter:
    """Counts windows drawn and failed over the whole run (all ranks) and stops it, on every rank together, when
    the failure rate passes the threshold. ``reduce`` sums a dict over ranks (``Run.reduce_sums``)."""

    def __init__(self, options: StreamOptions, reduce: Callable[[dict[str, float]], dict[str, float]]) -> None:
        self.options, self.reduce = options, reduce
        self.windows = self.failures = self.lost = 0

    def state(self) -> dict[str, int]:
        return {"windows": self.windows, "failures": self.failures, "lost": self.lost}

    def load_state(self, d: dict[str, int]) -> None:
        self.windows, self.failures, self.lost = int(d["windows"]), int(d["failures"]), int(d["lost"])

    def update(self, windows: int, failures: int, lost: int) -> int:
        """Add this rank's step; returns the step's failures over all ranks; raises :class:`DataFailure`."""
        s = self.reduce({"windows": float(windows + failures), "failures": float(failures), "lost": float(lost)})
        self.windows += int(s["windows"])
        self.failures += int(s["failures"])
        self.lost += int(s["lost"])
        opt = self.options
        rate = self.failures / max(self.windows, 1)
        if self.lost or (self.windows >= opt.failure_grace and rate > opt.max_failure_rate):
            raise DataFailure(
                f"{self.failures} of {self.windows} windows drawn so far failed to decode ({rate:.1%}; "
                f"stream.max_failure_rate={opt.max_failure_rate}), {self.lost} found no decodable replacement in "
                f"{opt.retries} tries: check the files the log names (and python -m training prepare's report)")
        return int(s["failures"])
