"""A decoded-clip cache beside a manifest, for collections decoded many times: every clip decoded once at a model's
clip spec (:func:`model_store.media.decode`: frames at the spec's fps and size, audio at its rate), stored in
sharded raw arrays that training memory-maps.

``python -m training prepare SOURCE --out M.csv --cache MODEL`` writes ``M.cache/<fps>fps-<W>x<H>-<rate>hz/``:

- ``frames-NNNNN.u8``: uint8 frames, (n, H, W, 3) back to back; ``audio-NNNNN.f32``: float32 samples;
- ``index.npz``: per clip its manifest path (the key), shard, offsets and lengths, duration and has_audio;
- ``spec.json``: the clip spec it was decoded at.

The streaming datasets (:mod:`training.data.streaming`, :mod:`training.avsync.stream`) look for the cache of their
run's clip spec beside the manifest and, for a clip it holds, cut windows from the mapped arrays
(:func:`model_store.media.cut_window`, the arithmetic the service's windows use) instead of seeking in the file:
the same windows, bit for bit, without decoding. Clips it does not hold are decoded as usual.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from model_store.manifest import ClipSpec
from model_store.media import Decoded

SHARD_BYTES = 1 << 31  # a shard file is closed past 2 GiB


def spec_key(spec: ClipSpec) -> str:
    """What decoding depends on (not the window length): ``8fps-64x64-16000hz``."""
    return f"{spec.fps:g}fps-{spec.width}x{spec.height}-{spec.sample_rate}hz"


def cache_dir(manifest: str | Path, spec: ClipSpec) -> Path:
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}.cache") / spec_key(spec)


class CacheWriter:
    """Appends decoded clips to shard files; :meth:`close` writes the index (atomically) last, so a cache without
    ``index.npz`` is an unfinished one and is never read."""

    def __init__(self, root: Path, spec: ClipSpec, shard_bytes: int = SHARD_BYTES) -> None:
        self.root, self.spec, self.shard_bytes = Path(root), spec, shard_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "index.npz").unlink(missing_ok=True)
        for old in list(self.root.glob("frames-*.u8")) + list(self.root.glob("audio-*.f32")):
            old.unlink()
        self.rows: list[tuple] = []
        self.shard, self.frame_at, self.sample_at, self.bytes = 0, 0, 0, 0
        self._open()

    def _open(self) -> None:
        self.frames_fh = (self.root / f"frames-{self.shard:05d}.u8").open("wb")
        self.audio_fh = (self.root / f"audio-{self.shard:05d}.f32").open("wb")

    def add(self, key: str, decoded: Decoded) -> None:
        frames = np.ascontiguousarray(decoded.frames, dtype=np.uint8)
        if frames.shape[1:] != (self.spec.height, self.spec.width, 3):
            raise ValueError(f"{key}: frames of {frames.shape[1:]} for a cache at {spec_key(self.spec)}")
        audio = np.ascontiguousarray(decoded.audio, dtype=np.float32)
        if self.bytes and self.bytes + frames.nbytes + audio.nbytes > self.shard_bytes:
            self.frames_fh.close()
            self.audio_fh.close()
            self.shard, self.frame_at, self.sample_at, self.bytes = self.shard + 1, 0, 0, 0
            self._open()
        self.frames_fh.write(frames.tobytes())
        self.audio_fh.write(audio.tobytes())
        self.rows.append((key, self.shard, self.frame_at, len(frames), self.sample_at, len(audio),
                          decoded.duration_s, decoded.has_audio))
        self.frame_at += len(frames)
        self.sample_at += len(audio)
        self.bytes += frames.nbytes + audio.nbytes

    def close(self) -> Path:
        self.frames_fh.close()
        self.audio_fh.close()
        keys, shard, fo, nf, so, ns, dur, has = zip(*self.rows, strict=True) if self.rows else ([],) * 8
        (self.root / "spec.json").write_text(json.dumps(self.spec.model_dump()) + "\n")
        tmp = self.root / f".index.{os.getpid()}.npz"
        np.savez(tmp, keys=np.array([os.fsencode(k) for k in keys], dtype=bytes), shard=np.array(shard, np.int32),
                 frame_offset=np.array(fo, np.int64), n_frames=np.array(nf, np.int64),
                 sample_offset=np.array(so, np.int64), n_samples=np.array(ns, np.int64),
                 duration_s=np.array(dur, np.float64), has_audio=np.array(has, bool))
        os.replace(tmp, self.root / "index.npz")
        return self.root


class DecodedCache:
    """A finished cache, read through memory maps opened lazily in each process (DataLoader workers open their
    own). :meth:`get` gives a clip's full decode as views of the maps, or None for a clip it does not hold."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        with np.load(self.root / "index.npz") as z:
            self.index = {os.fsdecode(k): i for i, k in enumerate(z["keys"])}
            self.shard, self.frame_offset, self.n_frames = z["shard"], z["frame_offset"], z["n_frames"]
            self.sample_offset, self.n_samples = z["sample_offset"], z["n_samples"]
            self.duration_s, self.has_audio = z["duration_s"], z["has_audio"]
        self.spec = ClipSpec(**json.loads((self.root / "spec.json").read_text()))
        self._maps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def find(cls, manifest: str | Path, spec: ClipSpec) -> DecodedCache | None:
        """The finished cache of ``manifest`` decoded at ``spec``'s fps, size and rate, if there is one."""
        root = cache_dir(manifest, spec)
        return cls(root) if (root / "index.npz").is_file() else None

    def __len__(self) -> int:
        return len(self.index)

    def _map(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        key = (os.getpid(), shard)
        if key not in self._maps:
            h, w = self.spec.height, self.spec.width
            frames = self.root / f"frames-{shard:05d}.u8"
            audio = self.root / f"audio-{shard:05d}.f32"
            f = np.memmap(frames, dtype=np.uint8, mode="r") if frames.stat().st_size else np.zeros(0, np.uint8)
            a = np.memmap(audio, dtype=np.float32, mode="r") if audio.stat().st_size else np.zeros(0, np.float32)
            self._maps[key] = (f.reshape(-1, h, w, 3), a)
        return self._maps[key]

    def get(self, key: str) -> Decoded | None:
        i = self.index.get(key)
        if i is None:
            return None
        frames, audio = self._map(int(self.shard[i]))
        fo, so = int(self.frame_offset[i]), int(self.sample_offset[i])
        return Decoded(frames=frames[fo:fo + int(self.n_frames[i])], audio=audio[so:so + int(self.n_samples[i])],
                       duration_s=float(self.duration_s[i]), has_audio=bool(self.has_audio[i]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}  # maps are reopened where the object lands (spawned workers)
