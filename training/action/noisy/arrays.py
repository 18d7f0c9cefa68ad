"""Decoded clips as stacked arrays, so that every method, seed and noise cell of a benchmark reuses one decode,
and windows are drawn by indexing instead of a DataLoader (a small win that matters on a shared CPU)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from model_store.manifest import ClipSpec
from model_store.media import window_starts
from training.action.noisy.source import Part
from training.data.datasets import ClipData

if TYPE_CHECKING:
    from training.engine import Run

log = logging.getLogger(__name__)


@dataclass
class ArraySet:
    """Clips of one length. frames (N, F, H, W, 3) uint8 at ``spec.fps``; audio (N, S) float32. A
    :class:`~training.action.noisy.source.ClipSource`: every clip has sound (SynthAV's do), rank 0 embeds them all."""

    frames: np.ndarray
    audio: np.ndarray
    labels: np.ndarray  # (N,) int64
    spec: ClipSpec
    sharded = False  # a class attribute: middle_windows gives rank 0 every clip

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def audible(self) -> np.ndarray:
        return np.ones(len(self), dtype=bool)

    # -- the ClipSource interface: windows are cut by indexing, nothing runs ahead

    def start_epoch(self, key: int, batches: Sequence[np.ndarray], start: int, run: Run) -> None:
        pass

    def end_epoch(self) -> None:
        pass

    def batch(self, idx: np.ndarray, rng: np.random.Generator, run: Run) -> Part:
        """A random whole-frame start per window of the global batch, drawn from ``rng``; this rank's share cut."""
        starts = random_starts(self, len(idx), rng)
        mine = np.asarray(run.shard(range(len(idx))), dtype=np.int64)
        video, audio = window_batch(self, idx[mine], starts[mine])
        return Part(idx[mine], video, audio, np.zeros(len(mine), dtype=bool), idx)

    def middle_windows(self, run: Run, batch: int) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        mid = (self.frames.shape[1] - self.spec.frames) // 2
        for s in range(0, len(self), batch):
            idx = np.arange(s, min(s + batch, len(self)))
            video, audio = window_batch(self, idx, np.full(len(idx), mid))
            yield idx, video.to(run.device), audio.to(run.device)

    @torch.inference_mode()
    def predict(self, model: torch.nn.Module, zero: str | None = None, batch: int = 64) -> np.ndarray:
        """(N, K) clip probabilities: softmax per sliding window, averaged over the clip, as the service does."""
        model.eval()
        owners, starts = eval_windows(self)
        out = None
        dev = next(model.parameters()).device
        for s in range(0, len(owners), batch):
            video, audio = window_batch(self, owners[s : s + batch], starts[s : s + batch])
            if zero == "video":
                video.zero_()
            elif zero == "audio":
                audio.zero_()
            p = model(video.to(dev), audio.to(dev)).softmax(1).cpu().numpy()
            out = np.zeros((len(self), p.shape[1])) if out is None else out
            np.add.at(out, owners[s : s + batch], p)
        return out / np.bincount(owners, minlength=len(self))[:, None]

    def accuracy(self, model: torch.nn.Module, run: Run, zero: str | None = None) -> float:
        """The share of clips whose mean window softmax picks their label (every clip, on any rank)."""
        return float((self.predict(model, zero).argmax(1) == self.labels).mean())

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, d: dict[str, Any]) -> None:
        pass

    @property
    def duration_s(self) -> float:
        return self.frames.shape[1] / self.spec.fps

    def subset(self, idx: np.ndarray | slice) -> ArraySet:
        return ArraySet(self.frames[idx], self.audio[idx], self.labels[idx], self.spec)

    def with_noise(self, labels: np.ndarray, audio_source: np.ndarray) -> ArraySet:
        """Same frames; the given labels; clip i carries the audio of clip ``audio_source[i]``."""
        return ArraySet(self.frames, self.audio[audio_source], np.asarray(labels, dtype=np.int64), self.spec)

    def downsample(self, spec: ClipSpec) -> ArraySet:
        """A smaller clip spec for fast benchmarks: integer frame stride and spatial average pooling."""
        ft = round(self.spec.fps / spec.fps)
        fs = self.spec.height // spec.height
        if ft * spec.fps != self.spec.fps or fs * spec.height != self.spec.height or spec.sample_rate != \
                self.spec.sample_rate:
            raise ValueError(f"cannot derive {spec} from {self.spec} by integer strides")
        f = self.frames[:, ::ft]
        n, t, h, w, c = f.shape
        f = f.reshape(n, t, h // fs, fs, w // fs, fs, c).mean(axis=(3, 5)).round().astype(np.uint8)
        return ArraySet(f, self.audio, self.labels, spec)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, frames=self.frames, audio=self.audio, labels=self.labels,
                 spec=np.array(self.spec.model_dump_json()))
        tmp.rename(path)

    @classmethod
    def load(cls, path: Path) -> ArraySet:
        z = np.load(path)
        return cls(z["frames"], z["audio"], z["labels"], ClipSpec.model_validate_json(str(z["spec"])))


def from_clips(clips: list[ClipData], spec: ClipSpec) -> ArraySet:
    """Stack clips, cut to the shortest one's length (SynthAV clips all have one length)."""
    nf = min(len(c.frames) for c in clips)
    ns = min(len(c.audio) for c in clips)
    if nf < spec.frames or ns < spec.audio_samples:
        raise ValueError(f"the shortest clip ({nf} frames) is shorter than one window ({spec.frames} frames)")
    ns = min(ns, int(round(nf / spec.fps * spec.sample_rate)))
    frames = np.stack([c.frames[:nf] for c in clips])
    audio = np.stack([c.audio[:ns] for c in clips]).astype(np.float32)
    return ArraySet(frames, audio, np.array([c.label for c in clips], dtype=np.int64), spec)


def load_array_set(data: str, spec: ClipSpec, labels: list[str], cache_dir: str = "data/synthav",
                   array_cache: str | None = "runs/noise/cache", workers: int = 2, progress: bool = False) -> ArraySet:
    """Decode a dataset (``synthav:...`` or a directory) with the service's decoder, once: the stacked arrays
    are kept in ``array_cache`` keyed by the data and the clip spec."""
    from training.data.datasets import load_clips, read_records, resolve_data

    root = resolve_data(data, cache_dir)
    key = f"{Path(root).name}-{spec.frames}f{spec.fps:g}fps{spec.height}x{spec.width}-{spec.sample_rate}.npz"
    path = Path(array_cache) / key if array_cache else None
    if path is not None and path.is_file():
        log.info("decoded arrays from %s", path)
        return ArraySet.load(path)
    clips = load_clips(read_records(root), spec, labels, workers=workers, progress=progress)
    arrays = from_clips(clips, spec)
    if path is not None:
        arrays.save(path)
    return arrays


def _normalize(frames: np.ndarray, spec: ClipSpec) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, 3, T, H, W) normalised as the spec says."""
    x = torch.from_numpy(frames).float().div_(255.0)
    mean = torch.tensor(spec.pixel_mean).view(1, 1, 1, 1, 3)
    std = torch.tensor(spec.pixel_std).view(1, 1, 1, 1, 3)
    return ((x - mean) / std).permute(0, 4, 1, 2, 3).contiguous()


def window_batch(data: ArraySet, idx: np.ndarray, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Video (B, 3, T, H, W) and audio (B, S) windows of clips ``idx`` starting at frame ``starts``."""
    spec = data.spec
    fi = starts[:, None] + np.arange(spec.frames)[None]  # (B, T)
    video = data.frames[idx[:, None], fi]  # (B, T, H, W, 3)
    a0 = np.round(starts / spec.fps * spec.sample_rate).astype(np.int64)
    ai = np.minimum(a0[:, None] + np.arange(spec.audio_samples)[None], data.audio.shape[1] - 1)
    audio = data.audio[idx[:, None], ai]  # (B, S)
    return _normalize(video, spec), torch.from_numpy(np.ascontiguousarray(audio))


def random_starts(data: ArraySet, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random whole-frame start per window (training crops)."""
    return rng.integers(0, data.frames.shape[1] - data.spec.frames + 1, size=n)


def eval_windows(data: ArraySet) -> tuple[np.ndarray, np.ndarray]:
    """(clip index, start frame) of the sliding windows the service uses, over all clips."""
    starts = np.round(window_starts(data.duration_s, data.spec) * data.spec.fps).astype(np.int64)
    starts = np.minimum(starts, data.frames.shape[1] - data.spec.frames)
    owners = np.repeat(np.arange(len(data)), len(starts))
    return owners, np.tile(starts, len(data))


def clip_spec_of(spec: ClipSpec, **changes) -> ClipSpec:
    """``spec`` with some fields changed, validated again."""
    return ClipSpec.model_validate({**spec.model_dump(), **changes})
