"""A noisy clip set streamed from a manifest (``python -m training prepare``) for the noisy-label methods: the
:class:`~training.action.noisy.source.ClipSource` that :class:`~training.action.noisy.arrays.ArraySet` is in RAM,
built on :mod:`training.data.streaming` as plain ``train-action`` streams.

- **Training windows** (:class:`NoisyWindows`): clip i's window starts at a whole frame drawn from
  ``default_rng([seed, epoch, i, attempt])`` (``epoch``: the run's epoch, counted over NTL's two phases), so a batch
  does not depend on the number of workers or on where a run was resumed; DataLoader workers decode each epoch's
  batches ahead; frames travel as uint8 and are normalised on the device.
- **Correspondence noise** (:meth:`StreamedClips.with_noise`): clip i carries the audio of clip
  ``audio_source[i]``, decoded from that clip's file at the same offset into its span (the latest start that fits
  when it is shorter), as ``ArraySet.with_noise`` indexes another row's audio at the same start.
- **Bad files**: a window whose file (or whose audio source's file) fails is replaced by another clip's, drawn as
  :class:`~training.data.streaming.StreamingWindows` draws it; the window then counts as that clip's (its label,
  its pair weight) and is counted in a :class:`~training.data.streaming.FailureMeter`, which stops the run past
  ``stream.max_failure_rate``. In NTL's whole-set passes a clip that fails is embedded from zeros and counted too.
- **Silence**: a window whose audio comes from a clip without a sound track is marked ``silent``: never a
  corresponding pair (NTL's phase-1 weight 0), a video-only sample otherwise.
- **Whole-set passes** (:meth:`StreamedClips.middle_windows`): each rank decodes and embeds a contiguous share and
  rank 0 gathers the (N, d) embeddings: the pass costs a decode per clip, which is what splits over ranks.
- **Validation** (:meth:`StreamedClips.accuracy`): the service's sliding windows of each clip, one decode per clip,
  the clips split over the ranks and the counts summed; nothing of the split is held but per-batch windows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from model_store.manifest import ClipSpec
from model_store.media import MediaError, MediaLimits, cut_window, decode_span, window_starts
from training.action.noisy.source import Part
from training.data.cache import DecodedCache
from training.data.collection import ClipTable
from training.data.streaming import (
    FailureMeter,
    StreamingWindows,
    StreamOptions,
    cat_clip_windows,
    loader_workers,
    normalize_frames,
    window_draws,
)

if TYPE_CHECKING:
    from training.engine import Run

log = logging.getLogger(__name__)


def audio_start(table: ClipTable, row: int, src: int, start: float, spec: ClipSpec) -> float:
    """Where clip ``row``'s window at ``start`` takes its audio from in clip ``src``: the same offset into ``src``'s
    span, or the latest start that fits when ``src`` is shorter."""
    lo, _ = table.span(row)
    lo_s, hi_s = table.span(src)
    return min(lo_s + (start - lo), max(lo_s, hi_s - spec.window_s))


def middle_start(table: ClipTable, row: int, spec: ClipSpec) -> float:
    """The start of clip ``row``'s middle window, in whole frames (``ArraySet``'s ``(frames - T) // 2``)."""
    lo, hi = table.span(row)
    return lo + max(0, (int(round((hi - lo) * spec.fps)) - spec.frames) // 2) / spec.fps


class NoisyWindows(StreamingWindows):
    """One random window of clip i per item, with the audio of clip ``audio_source[i]``.

    Items: ``(video (T, H, W, 3) uint8, audio (S,) float32, index, row, failures, lost, silent)``: ``row`` is the
    clip the window came from (``index`` unless it was replaced), ``silent`` whether its audio has no sound track.
    """

    def __init__(self, table: ClipTable, spec: ClipSpec, labels: np.ndarray, audio_source: np.ndarray, seed: int = 0,
                 options: StreamOptions | None = None, limits: MediaLimits | None = None,
                 cache: DecodedCache | None = None) -> None:
        super().__init__(table, spec, labels, seed, options, limits, cache)
        self.audio_source = np.asarray(audio_source, dtype=np.int64)

    def pair(self, row: int, start: float) -> tuple[np.ndarray, np.ndarray, bool] | None:
        """Clip ``row``'s frames at ``start`` and the audio it carries, with whether that audio has sound; None when
        a file fails."""
        window = self._decode(row, start)
        if window is None:
            return None
        src = int(self.audio_source[row])
        if src == row:
            return window.video, window.audio, window.has_audio
        other = self._decode(src, audio_start(self.table, row, src, start, self.spec))
        if other is None:
            return None
        return window.video, other.audio, other.has_audio

    def __getitem__(self, i: int):
        failures = 0
        for row, start in window_draws(self.seed, self.epoch, i, self.options.retries, self.table, self.spec):
            pair = self.pair(row, start)
            if pair is None:
                failures += 1
                continue
            video, audio, sound = pair
            return torch.from_numpy(video), torch.from_numpy(audio), int(i), row, failures, False, not sound
        spec = self.spec
        return (torch.zeros((spec.frames, spec.height, spec.width, 3), dtype=torch.uint8),
                torch.zeros(spec.audio_samples), int(i), int(i), failures, True, True)


class MiddleWindows(NoisyWindows):
    """Each clip's middle window (NTL's whole-set passes). Items: ``(video, audio, index, failed)``; a clip whose
    file fails gives zeros (it is embedded, and counted, but never replaced: every clip needs its own row)."""

    def __getitem__(self, i: int):
        pair = self.pair(int(i), middle_start(self.table, int(i), self.spec))
        if pair is None:
            spec = self.spec
            return (torch.zeros((spec.frames, spec.height, spec.width, 3), dtype=torch.uint8),
                    torch.zeros(spec.audio_samples), int(i), True)
        return torch.from_numpy(pair[0]), torch.from_numpy(pair[1]), int(i), False


class NoisyClipWindows(Dataset):
    """Evaluation: every window the service would cut from clip i, its audio from clip ``audio_source[i]`` (same
    offsets); items as :class:`~training.data.streaming.ClipWindows` gives them, batched by
    :func:`~training.data.streaming.cat_clip_windows`."""

    def __init__(self, table: ClipTable, spec: ClipSpec, labels: np.ndarray, audio_source: np.ndarray,
                 limits: MediaLimits | None = None, cache: DecodedCache | None = None) -> None:
        self.table, self.spec, self.labels = table, spec, np.asarray(labels)
        self.audio_source = np.asarray(audio_source, dtype=np.int64)
        self.limits, self.cache = limits or MediaLimits(), cache

    def __len__(self) -> int:
        return len(self.table)

    def _windows(self, row: int, starts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        spec = self.spec
        cached = self.cache.get(self.table.key(row)) if self.cache is not None else None
        if cached is not None:
            return [cut_window(cached, spec, float(s)) for s in starts]
        span = decode_span(self.table.path(row), spec, float(starts.min()), float(starts.max()) + spec.window_s,
                           self.limits)
        return [span.window(spec, float(s)) for s in starts]

    def __getitem__(self, i: int):
        lo, hi = self.table.span(i)
        spec, src = self.spec, int(self.audio_source[i])
        starts = lo + window_starts(hi - lo, spec)
        try:
            pairs = self._windows(i, starts)
            if src != i:
                foreign = self._windows(src, np.array([audio_start(self.table, i, src, float(s), spec)
                                                       for s in starts]))
                pairs = [(v, a) for (v, _), (_, a) in zip(pairs, foreign, strict=True)]
        except (MediaError, OSError, ValueError) as exc:
            log.warning("evaluation skips clip %d (%s, audio from %s): %s", i, self.table.path(i),
                        self.table.path(src), exc)
            return (torch.zeros((0, spec.frames, spec.height, spec.width, 3), dtype=torch.uint8),
                    torch.zeros((0, spec.audio_samples)), torch.as_tensor(self.labels[i]), i, True)
        video = torch.from_numpy(np.stack([v for v, _ in pairs]))
        audio = torch.from_numpy(np.stack([a for _, a in pairs]))
        return video, audio, torch.as_tensor(self.labels[i]), i, False


class StreamedClips:
    """A manifest's clips as a noisy-label :class:`~training.action.noisy.source.ClipSource` (see the module)."""

    sharded = True

    def __init__(self, table: ClipTable, spec: ClipSpec, labels: np.ndarray, seed: int = 0,
                 options: StreamOptions | None = None, audio_source: np.ndarray | None = None,
                 cache: DecodedCache | None = None, limits: MediaLimits | None = None) -> None:
        self.table, self.spec, self.seed = table, spec, seed
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(table):
            raise ValueError(f"{len(self.labels)} labels for {len(table)} clips")
        self.audio_source = (np.arange(len(table), dtype=np.int64) if audio_source is None
                             else np.asarray(audio_source, dtype=np.int64))
        self.options, self.cache, self.limits = options or StreamOptions(), cache, limits or MediaLimits()
        self.meter = FailureMeter(self.options, self._reduce)
        self._run: Run | None = None
        self._it: Iterator | None = None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def audible(self) -> np.ndarray:
        return self.table.has_audio[self.audio_source]

    def with_noise(self, labels: np.ndarray, audio_source: np.ndarray) -> StreamedClips:
        return StreamedClips(self.table, self.spec, labels, self.seed, self.options,
                             self.audio_source[np.asarray(audio_source)], self.cache, self.limits)

    def _reduce(self, values: dict[str, float]) -> dict[str, float]:
        return self._run.reduce_sums(values) if self._run is not None else dict(values)

    def _loader(self, dataset: Dataset, batches: list, key: int, device: torch.device, **kw: Any) -> DataLoader:
        workers = self.options.workers
        # its own generator: a loader's iterator draws a base seed, which must not come from torch's global stream
        return DataLoader(dataset, batch_sampler=batches, pin_memory=device.type == "cuda", **loader_workers(workers),
                          prefetch_factor=self.options.prefetch if workers else None,
                          generator=torch.Generator().manual_seed(self.seed * 100_003 + key), **kw)

    # -- training batches

    def start_epoch(self, key: int, batches: Sequence[np.ndarray], start: int, run: Run) -> None:
        self.end_epoch()
        self._run = run
        windows = NoisyWindows(self.table, self.spec, self.labels, self.audio_source, self.seed, self.options,
                               self.limits, self.cache)
        windows.epoch = key
        shares = [[int(i) for i in run.shard(b)] for b in batches[start:]]
        self._it = iter(self._loader(windows, shares, key, run.device))

    def end_epoch(self) -> None:
        self._it = None  # the loader's workers end with its iterator

    def batch(self, idx: np.ndarray, rng: np.random.Generator, run: Run) -> Part:
        mine = np.asarray(run.shard(idx), dtype=np.int64)
        if self._it is None:
            raise RuntimeError("StreamedClips.batch before start_epoch")
        video, audio, items, rows, failures, lost, silent = next(self._it)
        if not np.array_equal(items.numpy(), mine):
            raise RuntimeError(f"the stream is out of step: it decoded clips {items.tolist()}, the step asks for "
                               f"{mine.tolist()}")
        n_lost = int(lost.sum())
        skipped = self.meter.update(len(mine) - n_lost, int(failures.sum()), n_lost)
        rows_np = rows.numpy().astype(np.int64)
        # a replacement anywhere changes the global batch's rows: every rank needs them (NTL's phase-1 weights)
        every = idx if skipped == 0 else np.concatenate(run.gather(rows_np))
        device = run.device
        video = normalize_frames(video.to(device, non_blocking=True), self.spec)  # uint8 over the bus
        return Part(rows_np, video, audio.to(device, non_blocking=True), silent.numpy().astype(bool), every,
                    {"skipped": float(skipped)})

    # -- whole-set passes

    def share(self, run: Run) -> np.ndarray:
        """This rank's contiguous share of the clips (rank order: gathered shares concatenate to 0..N-1)."""
        return np.array_split(np.arange(len(self)), run.world_size)[run.rank]

    def middle_windows(self, run: Run, batch: int) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        self._run = run
        share = self.share(run)
        dataset = MiddleWindows(self.table, self.spec, self.labels, self.audio_source, self.seed, self.options,
                                self.limits, self.cache)
        blocks = [share[s:s + batch].tolist() for s in range(0, len(share), batch)]
        failed = 0
        for video, audio, items, bad in self._loader(dataset, blocks, 0, run.device):
            failed += int(bad.sum())
            yield (items.numpy(), normalize_frames(video.to(run.device, non_blocking=True), self.spec),
                   audio.to(run.device, non_blocking=True))
        self.meter.update(len(share) - failed, failed, 0)  # once per pass on every rank: the counts are summed

    # -- validation

    @torch.inference_mode()
    def accuracy(self, model: nn.Module, run: Run, zero: str | None = None, batch: int = 64) -> float:
        """The share of clips whose mean window softmax picks their (given) label; clips whose files fail are left
        out (and logged). Each rank scores its share of the clips; the counts are summed."""
        model.eval()
        device = next(model.parameters()).device
        share = self.share(run)
        dataset = NoisyClipWindows(self.table, self.spec, self.labels, self.audio_source, self.limits, self.cache)
        blocks = [share[s:s + 8].tolist() for s in range(0, len(share), 8)]
        correct = n = 0
        for video, audio, target, rows, _ in self._loader(dataset, blocks, 0, device, collate_fn=cat_clip_windows):
            if len(rows) == 0:
                continue
            probs = []
            for s in range(0, len(rows), batch):
                v = normalize_frames(video[s:s + batch].to(device), self.spec)
                a = audio[s:s + batch].to(device)
                if zero == "video":
                    v.zero_()
                elif zero == "audio":
                    a.zero_()
                probs.append(model(v, a).float().softmax(1).cpu())
            p = torch.cat(probs)
            clips, inverse = torch.unique(rows, return_inverse=True)
            sums = torch.zeros(len(clips), p.shape[1]).index_add_(0, inverse, p)
            labels = torch.zeros(len(clips), dtype=torch.long).index_copy_(0, inverse, target)
            correct += int((sums.argmax(1) == labels).sum())
            n += len(clips)
        total = run.reduce_sums({"correct": correct, "n": n})
        return total["correct"] / max(total["n"], 1)

    # -- checkpoint

    def state(self) -> dict[str, Any]:
        return {"meter": self.meter.state()}

    def load_state(self, d: dict[str, Any]) -> None:
        self.meter.load_state(d["meter"])
