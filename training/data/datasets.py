"""AV dataset directories (index.csv), Kinetics-style CSVs and UCF-style class trees, decoded with the
service's own decoder (:mod:`model_store.media`) into in-memory clips, and torch datasets over their windows.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from model_store.manifest import ClipSpec
from model_store.media import Decoded, MediaLimits, cut_windows, decode, normalize_video
from training.data.collection import ALL_SPLITS, is_manifest, read_manifest, split_labels, split_spec
from training.data.workers import worker_context

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"}


@dataclass
class Record:
    """One clip of a dataset. ``labels`` holds every label of the clip; ``label`` is the one label of a
    single-label clip (None when it has none or several)."""

    video: Path
    label: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    on_screen: Path | None = None
    off_screen: Path | None = None
    boxes: list[list[float]] | None = None
    split: str | None = None
    speaker: str | None = None
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.labels and self.label is not None:
            self.labels = (self.label,)


@dataclass
class ClipData:
    """A decoded clip: frames at the spec's fps and audio at its rate, plus its ground truth."""

    frames: np.ndarray  # (N, H, W, 3) uint8
    audio: np.ndarray  # (S,) float32
    duration_s: float
    label: int
    extra: dict = field(default_factory=dict)


_SYNTH = re.compile(r"^synthav:(.*)$")


def parse_synth_spec(spec: str) -> dict[str, int | str] | None:
    """``synthav:seed=S,n=N[,kind=actions][,voices=DIR]`` -> dict, or None for a path (``voices``: speech kinds
    voiced by the recordings under DIR, e.g. ``python -m training voices``' ``data/voices/train``)."""
    m = _SYNTH.match(spec)
    if not m:
        return None
    out: dict[str, int | str] = {"kind": "actions"}
    for part in filter(None, m.group(1).split(",")):
        key, _, value = part.partition("=")
        if key not in ("seed", "n", "kind", "voices"):
            raise ValueError(f"{spec!r}: unknown key {key!r} (seed, n, kind, voices)")
        out[key] = value if key in ("kind", "voices") else int(value)
    if "voices" in out and not str(out["kind"]).startswith("speech"):
        raise ValueError(f"{spec!r}: voices= is for the speech kinds")
    if "seed" not in out or "n" not in out:
        raise ValueError(f"{spec!r} needs seed= and n=")
    return out


def slug(text: str) -> str:
    """``text`` as a file-name part: runs of anything but letters and digits become one ``_``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def resolve_data(spec: str, cache_dir: str | Path = "data/synthav") -> Path:
    """A dataset directory for ``spec``: a path as is, or a SynthAV set rendered once into ``cache_dir``."""
    synth = parse_synth_spec(spec)
    if synth is None:
        path = Path(spec)
        if not path.exists() and not is_manifest(spec):  # (a manifest may name its split: MANIFEST.csv#test)
            raise FileNotFoundError(f"no dataset at {path}")
        return path
    from training.data import synthav

    name = f"{synth['kind']}-seed{synth['seed']}-n{synth['n']}"
    if "voices" in synth:  # the folder's path names the set (its content is not hashed: render a new one elsewhere)
        name += "-voices-" + slug(str(synth["voices"]))
    out = Path(cache_dir) / name
    if not (out / "index.csv").is_file():
        log.info("rendering %s into %s", spec, out)
        tmp = out.with_name(f"{out.name}.{os.getpid()}.partial")
        if str(synth["kind"]).startswith("speech"):
            from training.data import synthav_speech

            synthav_speech.write_speech_dataset(tmp, n=int(synth["n"]), seed=int(synth["seed"]),
                                                kind=str(synth["kind"]), voices=synth.get("voices"),
                                                progress=True, workers=2)
        elif synth["kind"] != "actions":
            raise ValueError(f"SynthAV kind {synth['kind']!r} is not available (actions, speech*)")
        else:
            synthav.write_action_dataset(tmp, n=int(synth["n"]), seed=int(synth["seed"]), progress=True,
                                         workers=2)
        tmp.rename(out)
    return out


def read_records(root: str | Path) -> list[Record]:
    """Records of an AV dataset directory, a clip manifest (``prepare``'s; ``MANIFEST.csv#SPLIT`` for one split, else
    all its rows), a ``path,label[,start,end]`` CSV, or a ``root/<class>/<video>`` tree."""
    if is_manifest(root):
        return _manifest_records(root)
    root = Path(root)
    if root.is_file() and root.suffix == ".csv":
        return _read_csv(root, root.parent)
    if (root / "index.csv").is_file():
        return _read_csv(root / "index.csv", root)
    records = [
        Record(video=p, label=p.parent.name)
        for p in sorted(root.glob("*/*"))
        if p.suffix.lower() in VIDEO_SUFFIXES
    ]
    if not records:
        raise FileNotFoundError(f"{root}: no index.csv, and no <class>/<video> files")
    return records


def _manifest_records(spec: str | Path) -> list[Record]:
    file, split = split_spec(spec)
    table = read_manifest(file, split=split or ALL_SPLITS)
    records = []
    for i in range(len(table)):
        labels = table.row_labels(i)
        lo, hi = table.start_s[i], table.end_s[i]
        records.append(Record(video=table.path(i), label=labels[0] if len(labels) == 1 else None,
                              labels=tuple(labels),
                              start_s=float(lo) if np.isfinite(lo) else None,
                              end_s=float(hi) if np.isfinite(hi) else None,
                              split=table.splits[table.split_ids[i]] or None,
                              speaker=table.speakers[table.speaker_ids[i]] or None))
    return records


def _read_csv(path: Path, base: Path) -> list[Record]:
    def opt_path(v: str | None) -> Path | None:
        return base / v if v else None

    def opt_float(v: str | None) -> float | None:
        return float(v) if v not in (None, "") else None

    with open(path, newline="") as fh:
        first = next(csv.reader(fh), [])
        fh.seek(0)
        # a header names a `video` column; a header-less first row holds a path (which may contain "video")
        has_header = "video" in (c.strip() for c in first)
        if has_header:
            rows = list(csv.DictReader(fh))
        else:  # Kinetics/VGGSound style: path,label[,start,end]
            names = ["video", "label", "start_s", "end_s"]
            rows = [dict(zip(names, r, strict=False)) for r in csv.reader(fh) if r]
    records = []
    for row in rows:
        labels = split_labels(row.get("label"))
        records.append(Record(
            video=base / row["video"],
            label=labels[0] if len(labels) == 1 else None,
            labels=labels,
            start_s=opt_float(row.get("start_s")),
            end_s=opt_float(row.get("end_s")),
            on_screen=opt_path(row.get("on_screen")),
            off_screen=opt_path(row.get("off_screen")),
            boxes=json.loads(row["boxes"]) if row.get("boxes") else None,
            split=row.get("split") or None,
        ))
    return records


def _decode_one(args: tuple[Path, ClipSpec, float | None, float | None]) -> Decoded:
    path, spec, start, end = args
    decoded = decode(path, spec, MediaLimits())
    if start is not None or end is not None:  # keep the labelled span only
        s = start or 0.0
        e = min(end if end is not None else decoded.duration_s, decoded.duration_s)
        f0, f1 = int(round(s * spec.fps)), max(int(round(e * spec.fps)), int(round(s * spec.fps)) + 1)
        a0, a1 = int(round(s * spec.sample_rate)), int(round(e * spec.sample_rate))
        decoded = Decoded(decoded.frames[f0:f1], decoded.audio[a0:a1], e - s, decoded.has_audio)
    return decoded


def load_clips(
    records: Sequence[Record], spec: ClipSpec, labels: Sequence[str], workers: int = 2, progress: bool = False
) -> list[ClipData]:
    """Decode every record with the service's decoder, in ``workers`` processes."""
    index = {name: i for i, name in enumerate(labels)}
    for r in records:
        if len(r.labels) > 1:
            raise ValueError(f"{r.video} has {len(r.labels)} labels; this path decodes single-label clips (a "
                             "multi-label manifest trains streamed: train-action data.train=MANIFEST.csv)")
        if r.label is not None and r.label not in index:
            raise ValueError(f"{r.video}: label {r.label!r} is not one of {list(labels)}")
    jobs = [(r.video, spec, r.start_s, r.end_s) for r in records]
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=worker_context()) as pool:
            decoded = list(_progress(pool.map(_decode_one, jobs, chunksize=8), len(jobs), progress, "decode"))
    else:
        decoded = [_decode_one(j) for j in _progress(jobs, len(jobs), progress, "decode")]
    return [
        ClipData(d.frames, d.audio, d.duration_s, index[r.label] if r.label is not None else -1,
                 {"record": r, "has_audio": d.has_audio})
        for d, r in zip(decoded, records, strict=True)
    ]


def _progress(it, total: int, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, unit="clip")


def window_arrays(c: ClipData, clip: ClipSpec, video_s: float, audio_s: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames (T, H, W, 3) from ``video_s`` and float32 audio (S,) from ``audio_s``."""
    f0 = int(round(video_s * clip.fps))
    idx = np.minimum(np.arange(f0, f0 + clip.frames), len(c.frames) - 1)
    a0 = int(round(audio_s * clip.sample_rate))
    audio = np.zeros(clip.audio_samples, dtype=np.float32)
    chunk = c.audio[a0:a0 + clip.audio_samples]
    audio[:len(chunk)] = chunk
    return c.frames[idx], audio


class WindowDataset(Dataset):
    """One window per clip and item. Training draws a random start each time; evaluation takes the
    sliding windows the service uses (``all_windows=True``: item i is the i-th window over all clips).

    Items: ``(video (3, T, H, W) float32, audio (S,) float32, label int, clip index int)``.
    """

    def __init__(self, clips: Sequence[ClipData], spec: ClipSpec, train: bool, seed: int = 0) -> None:
        self.clips, self.spec, self.train = list(clips), spec, train
        self.seed, self.epoch = seed, 0  # a training window's start is drawn from (seed, epoch, item)
        self.index: list[tuple[int, float]] = []
        if not train:
            for ci, clip in enumerate(self.clips):
                wins = cut_windows(Decoded(clip.frames, clip.audio, clip.duration_s, True), spec)
                self.index.extend((ci, float(s)) for s in wins.starts_s)

    def __len__(self) -> int:
        return len(self.clips) if self.train else len(self.index)

    def window(self, ci: int, start_s: float) -> tuple[np.ndarray, np.ndarray]:
        return window_arrays(self.clips[ci], self.spec, start_s, start_s)

    def __getitem__(self, i: int):
        if self.train:
            ci = i
            span = max(0.0, self.clips[ci].duration_s - self.spec.window_s)
            # whole frames only, so that audio and frames stay on the same grid
            rng = np.random.default_rng([self.seed, self.epoch, i])
            start = math.floor(rng.uniform(0, span) * self.spec.fps) / self.spec.fps
        else:
            ci, start = self.index[i]
        frames, audio = self.window(ci, start)
        video = normalize_video(frames, self.spec)
        return torch.from_numpy(video), torch.from_numpy(audio), self.clips[ci].label, ci
