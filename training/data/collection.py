"""Clip manifests: the CSV ``python -m training prepare`` writes, one row per usable video, and the compact table
training reads it into.

Columns: ``path`` (relative to the manifest's folder, or absolute), ``duration_s``, ``fps``, ``width``,
``height``, ``has_audio`` (0/1), ``label`` (``;``-separated when a clip has several), ``split``, ``speaker``,
``start_s``, ``end_s`` (the labelled span; empty: the whole file).

A manifest is **multi-label** when any of its rows (in any split) carries several labels: AudioSet-style data, where
a clip's labels are all true at once. ``train-action`` then trains per-class sigmoids on multi-hot targets
(:class:`MultiHot`) and reports mAP; otherwise each clip has exactly one label (:meth:`ClipTable.label_index`).

:class:`ClipTable` holds a manifest as a handful of numpy arrays (no Python object per row): a table of a million
clips costs tens of MB, and DataLoader workers forked from the trainer share its pages instead of copying them
one reference count at a time (what a list of per-row dicts or strings does).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLUMNS = ("path", "duration_s", "fps", "width", "height", "has_audio", "label", "split", "speaker", "start_s",
           "end_s")
LABEL_SEP = ";"
VAL_SPLITS = ("val", "validation", "valid", "test")
ALL_SPLITS = "*"  # a split name that selects every row


class ManifestError(ValueError):
    """A manifest cannot be read (not a manifest, a malformed row, an unknown split)."""


@dataclass(frozen=True)
class ManifestRow:
    path: str
    duration_s: float
    fps: float
    width: int
    height: int
    has_audio: bool
    labels: tuple[str, ...] = ()
    split: str = ""
    speaker: str = ""
    start_s: float | None = None
    end_s: float | None = None

    def as_csv(self) -> list[str]:
        def num(v: float | None) -> str:
            return "" if v is None or not math.isfinite(v) else f"{v:.6g}"

        return [self.path, num(self.duration_s), num(self.fps), str(self.width), str(self.height),
                str(int(self.has_audio)), LABEL_SEP.join(self.labels), self.split, self.speaker, num(self.start_s),
                num(self.end_s)]


def split_labels(text: str | None) -> tuple[str, ...]:
    """A label cell's labels: several are joined by ``;`` (blanks around each are dropped)."""
    return tuple(filter(None, (s.strip() for s in (text or "").split(LABEL_SEP))))


def write_manifest(path: str | Path, rows: Iterable[ManifestRow]) -> int:
    """Write ``rows`` atomically (aside, then renamed); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for row in rows:
            w.writerow(row.as_csv())
            n += 1
    os.replace(tmp, path)
    return n


def is_manifest(path: str | Path) -> bool:
    """Whether ``path`` is a CSV whose header is a clip manifest's (``#SPLIT`` suffix allowed)."""
    file, _ = split_spec(path)
    if file.suffix.lower() != ".csv" or not file.is_file():
        return False
    with file.open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    return [h.strip() for h in header[:2]] == list(COLUMNS[:2])


def split_spec(spec: str | Path) -> tuple[Path, str | None]:
    """``MANIFEST.csv#test`` -> (path, "test"); without ``#``: (path, None)."""
    text = str(spec)
    if "#" in text:
        file, _, split = text.rpartition("#")
        return Path(file), split
    return Path(text), None


@dataclass
class ClipTable:
    """A manifest's rows as arrays. ``labels`` is the manifest's sorted label vocabulary; a row's labels are
    ``label_ids[label_ptr[i]:label_ptr[i + 1]]``. ``start_s``/``end_s`` are NaN where the row has none.
    ``multi_label`` is the whole manifest's (some row has several labels), kept by the subsets of its splits.

    Shape: every array (N,) except label_ptr (N + 1,) and label_ids (total labels,)
    """

    root: Path
    paths: np.ndarray  # bytes (S dtype), relative to root or absolute
    duration_s: np.ndarray  # float64
    has_audio: np.ndarray  # bool
    start_s: np.ndarray  # float64, NaN: the file's start
    end_s: np.ndarray  # float64, NaN: the file's end
    label_ptr: np.ndarray  # int64
    label_ids: np.ndarray  # int32
    labels: list[str]
    split_ids: np.ndarray  # int16 into splits
    splits: list[str]
    speaker_ids: np.ndarray  # int32 into speakers
    speakers: list[str]
    manifest: Path | None = None  # the file it was read from (a decoded cache lives beside it)
    multi_label: bool = False  # some row of the manifest (any split) carries several labels

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> Path:
        p = Path(os.fsdecode(self.paths[i]))
        return p if p.is_absolute() else self.root / p

    def key(self, i: int) -> str:
        """Row ``i``'s path as the manifest writes it (what a decoded cache is keyed by)."""
        return os.fsdecode(self.paths[i])

    def row_labels(self, i: int) -> list[str]:
        return [self.labels[k] for k in self.label_ids[self.label_ptr[i]:self.label_ptr[i + 1]]]

    def span(self, i: int) -> tuple[float, float]:
        """The labelled span of row ``i`` in seconds, inside the file."""
        lo = float(self.start_s[i]) if math.isfinite(self.start_s[i]) else 0.0
        hi = float(self.end_s[i]) if math.isfinite(self.end_s[i]) else float(self.duration_s[i])
        return max(0.0, lo), min(hi, float(self.duration_s[i]))

    def take(self, idx: Sequence[int] | np.ndarray) -> ClipTable:
        """The rows ``idx`` (vocabularies kept, so label ids stay comparable across subsets)."""
        idx = np.asarray(idx, dtype=np.int64)
        counts = np.diff(self.label_ptr)[idx]
        ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        ids = (np.concatenate([self.label_ids[self.label_ptr[i]:self.label_ptr[i + 1]] for i in idx])
               if len(idx) else np.zeros(0, np.int32)).astype(np.int32)
        return ClipTable(self.root, self.paths[idx], self.duration_s[idx], self.has_audio[idx], self.start_s[idx],
                         self.end_s[idx], ptr, ids, self.labels, self.split_ids[idx], self.splits,
                         self.speaker_ids[idx], self.speakers, self.manifest, self.multi_label)

    def select_split(self, split: str | None, val: bool = False) -> ClipTable:
        """The rows of ``split`` (``*``: every row); None: the training rows (split ``train``, or all rows when no
        row has it), or with ``val`` the first of val/validation/valid/test the manifest has (all rows when it has
        none)."""
        names = {s: k for k, s in enumerate(self.splits)}
        if split == ALL_SPLITS:
            return self
        if split is not None:
            if split not in names:
                raise ManifestError(f"the manifest has no split {split!r} (it has {sorted(s for s in names if s)})")
            return self.take(np.flatnonzero(self.split_ids == names[split]))
        wanted = [s for s in (VAL_SPLITS if val else ("train",)) if s in names]
        if not wanted:
            return self
        return self.take(np.flatnonzero(self.split_ids == names[wanted[0]]))

    def label_index(self, vocabulary: Sequence[str]) -> np.ndarray:
        """Each row's single label as an index into ``vocabulary``; raises where a row has none, several, or one
        the vocabulary lacks."""
        index = {name: k for k, name in enumerate(vocabulary)}
        counts = np.diff(self.label_ptr)
        if (counts != 1).any():
            i = int(np.flatnonzero(counts != 1)[0])
            raise ManifestError(f"{self.path(i)} has {counts[i]} labels; single-label training needs exactly one "
                                "per clip")
        out = np.empty(len(self), dtype=np.int64)
        for k, lid in enumerate(self.label_ids):
            name = self.labels[lid]
            if name not in index:
                raise ManifestError(f"{self.path(k)}: label {name!r} is not one of the run's {len(index)} labels")
            out[k] = index[name]
        return out


class MultiHot:
    """Multi-label targets: row ``i``'s labels as a multi-hot float32 vector over ``vocabulary``, built when asked
    for from the table's ragged label arrays (a dense N x K matrix of AudioSet's 2M clips and 527 classes would take
    4 GB). Labels outside ``vocabulary`` are dropped (``dropped`` counts them): a class the model lacks is not
    scored. Shape: ``self[i]`` (K,)
    """

    def __init__(self, table: ClipTable, vocabulary: Sequence[str]) -> None:
        index = {name: k for k, name in enumerate(vocabulary)}
        remap = np.array([index.get(name, -1) for name in table.labels] or [-1], dtype=np.int32)
        ids = remap[table.label_ids] if len(table.label_ids) else np.zeros(0, np.int32)
        keep = ids >= 0
        row_of = np.repeat(np.arange(len(table)), np.diff(table.label_ptr))  # each label's row
        kept = np.bincount(row_of[keep], minlength=len(table))
        self.classes = len(vocabulary)
        self.dropped = int((~keep).sum())
        self.ids = ids[keep]
        self.ptr = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.ptr) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        out = np.zeros(self.classes, dtype=np.float32)
        out[self.ids[self.ptr[i]:self.ptr[i + 1]]] = 1.0
        return out

    def dense(self) -> np.ndarray:
        """Every row's vector. Shape: (N, K)"""
        return np.stack([self[i] for i in range(len(self))]) if len(self) else np.zeros((0, self.classes), np.float32)


def read_manifest(spec: str | Path, split: str | None = None, val: bool = False) -> ClipTable:
    """Read ``MANIFEST.csv`` (or ``MANIFEST.csv#SPLIT``) into a :class:`ClipTable` of the selected split (see
    :meth:`ClipTable.select_split`; an explicit ``split`` wins over a ``#SPLIT`` suffix)."""
    file, suffix = split_spec(spec)
    if not is_manifest(file):
        raise ManifestError(f"{file} is not a clip manifest (python -m training prepare writes them)")
    paths: list[bytes] = []
    nums: list[tuple[float, float, float, bool]] = []
    label_ptr, label_ids = [0], []
    split_codes, speaker_codes = [], []
    labels: dict[str, int] = {}
    splits: dict[str, int] = {}
    speakers: dict[str, int] = {}
    with file.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = set(COLUMNS[:6]) - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"{file}: columns {sorted(missing)} are missing")
        for line, row in enumerate(reader, start=2):
            try:
                duration = float(row["duration_s"])
                start = float(row["start_s"]) if row.get("start_s") else math.nan
                end = float(row["end_s"]) if row.get("end_s") else math.nan
                has_audio = row["has_audio"].strip() in ("1", "true", "True")
            except (TypeError, ValueError) as exc:
                raise ManifestError(f"{file}:{line}: {exc}") from exc
            if not row["path"] or not math.isfinite(duration) or duration <= 0:
                raise ManifestError(f"{file}:{line}: a row needs a path and a positive duration_s")
            paths.append(os.fsencode(row["path"]))
            nums.append((duration, start, end, has_audio))
            for name in split_labels(row.get("label")):
                label_ids.append(labels.setdefault(name, len(labels)))
            label_ptr.append(len(label_ids))
            split_codes.append(splits.setdefault((row.get("split") or "").strip(), len(splits)))
            speaker_codes.append(speakers.setdefault((row.get("speaker") or "").strip(), len(speakers)))
    # the label vocabulary sorted, so that it does not depend on row order
    vocab = sorted(labels)
    remap = np.zeros(max(len(labels), 1), dtype=np.int32)
    for name, k in labels.items():
        remap[k] = vocab.index(name)
    arr = np.array(nums, dtype=np.float64).reshape(-1, 4)
    table = ClipTable(
        root=file.parent.resolve(),
        paths=np.array(paths, dtype=bytes) if paths else np.zeros(0, dtype="S1"),
        duration_s=arr[:, 0].copy(),
        has_audio=arr[:, 3].astype(bool),
        start_s=arr[:, 1].copy(),
        end_s=arr[:, 2].copy(),
        label_ptr=np.array(label_ptr, dtype=np.int64),
        label_ids=remap[np.array(label_ids, dtype=np.int64)] if label_ids else np.zeros(0, np.int32),
        labels=vocab,
        split_ids=np.array(split_codes, dtype=np.int16),
        splits=list(splits),
        speaker_ids=np.array(speaker_codes, dtype=np.int32),
        speakers=list(speakers),
        manifest=file.resolve(),
    )
    table.multi_label = bool((np.diff(table.label_ptr) > 1).any())
    return table.select_split(split if split is not None else suffix, val=val)
