"""``python -m training prepare SOURCE --out MANIFEST``: turn a real collection into a clip manifest.

SOURCE layouts (``--layout auto`` tells them apart):

- ``av``: an AV dataset directory (``index.csv`` with a ``video`` column), or a ``path,label[,start,end]`` CSV;
- ``kinetics``: a Kinetics CSV as it ships (``label,youtube_id,time_start,time_end,split``), files named
  ``<youtube_id>_<start:06d>_<end:06d>.mp4`` anywhere under ``--videos`` (default: the CSV's folder);
- ``vggsound``: a VGGSound CSV as it ships (no header: ``youtube_id,start,label,split``), files named
  ``<youtube_id>_<start:06d>.mp4`` by default;
- ``audioset``: an AudioSet segments CSV as it ships (``#`` comment lines, then ``YTID, start_seconds, end_seconds,
  positive_labels`` with the labels a quoted comma-separated list of ids such as ``"/m/09x0r,/m/04rlf"``), files
  named ``<youtube_id>_<start_ms>.mp4`` by default. **Multi-label**: a clip keeps all its labels (``;``-joined in the
  manifest's ``label`` column), named by ``--class-index`` (AudioSet's ``class_labels_indices.csv``:
  ``index,mid,display_name``; by default that file beside the CSV, if it is there), else kept as ids. The split comes
  from the CSV's name: ``*eval*`` -> ``test``, ``*train*`` -> ``train`` (``--val-fraction`` for others);
- ``--naming`` sets the file name pattern for kinetics, vggsound and audioset (Python format fields: ``youtube_id``,
  ``start``, ``end`` (whole seconds), ``start_ms``, ``end_ms``);
- ``ucf101``: a ``<class>/<video>`` tree with the official ``trainlistNN.txt``/``testlistNN.txt`` (in SOURCE,
  ``SOURCE/ucfTrainTestlist``, beside SOURCE, or ``--lists``); ``--fold`` picks NN;
- ``tree``: a ``<class>/<video>`` tree without lists (label: the folder);
- ``talking_heads``: ``<speaker>/<video>/<clip>.mp4`` (VoxCeleb2, LRS3): no labels, the speaker recorded.

Every file is probed (headers, then the first and the last window decoded) in ``--workers`` processes, with a
progress bar. Usable clips go to the manifest (:mod:`training.data.collection`); the rest to
``<MANIFEST stem>.skipped.csv`` with their reason: ``missing``, ``undecodable`` (no container, no video, a broken
or truncated stream), ``no_audio`` (unless ``--allow-silent``), ``too_short`` (``--min-duration``) or
``over_limits`` (``--max-duration``, pixels, streams). Labels come from the data; layouts without an official split
can be split by ``--val-fraction`` (per video, or per speaker for talking heads, so that splits share no speaker).
``--cache MODEL`` also decodes every usable clip at the model's clip spec into a memory-mapped cache beside the
manifest (:mod:`training.data.cache`), which the streaming datasets read instead of decoding.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from model_store.manifest import ClipSpec
from model_store.media import Decoded, MediaError, MediaLimits, decode, decode_span, probe
from training.data.cache import CacheWriter, cache_dir, spec_key
from training.data.collection import LABEL_SEP, ManifestRow, write_manifest
from training.data.workers import worker_context

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "av", "kinetics", "vggsound", "audioset", "ucf101", "tree", "talking_heads")
REASONS = ("missing", "undecodable", "no_audio", "too_short", "over_limits")
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv"}
DEFAULT_NAMING = {"kinetics": "{youtube_id}_{start:06d}_{end:06d}.mp4", "vggsound": "{youtube_id}_{start:06d}.mp4",
                  "audioset": "{youtube_id}_{start_ms}.mp4"}
VGGSOUND_SECONDS = 10  # VGGSound clips are 10 s from their start
AUDIOSET_CLASS_INDEX = "class_labels_indices.csv"  # AudioSet's index,mid,display_name
# the window decoded at both ends of every file: small, so that checking costs little more than decoding
CHECK_SPEC = ClipSpec(fps=4.0, frames=2, height=16, width=16, sample_rate=8000, audio_samples=4000)


class LayoutError(ValueError):
    """SOURCE is not a collection of the asked (or of any known) layout."""


@dataclass
class Entry:
    """One video a layout lists, before probing."""

    path: Path
    labels: list[str] = field(default_factory=list)
    split: str = ""
    speaker: str = ""
    start_s: float | None = None
    end_s: float | None = None
    source: str = ""  # what the layout listed (a CSV line, a list entry), for the skipped report


@dataclass(frozen=True)
class Checks:
    min_duration_s: float = 1.0
    allow_silent: bool = False
    limits: MediaLimits = MediaLimits()


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str
    detail: str


# ------------------------------------------------------------------------------------------------ layouts


def detect_layout(source: Path) -> str:
    """The layout of ``source``; raises :class:`LayoutError` when it fits none."""
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise LayoutError(f"{source}: a file SOURCE must be a .csv (Kinetics, VGGSound or path,label)")
        first = _first_row(source)
        cells = [c.strip().lower() for c in first]
        if "youtube_id" in cells:
            return "kinetics"
        if _is_audioset(source, first):
            return "audioset"
        if cells[:2] == ["path", "duration_s"]:
            raise LayoutError(f"{source} is already a clip manifest")
        if len(first) >= 3 and _is_number(first[1]) and Path(first[0]).suffix.lower() not in VIDEO_SUFFIXES:
            return "vggsound"
        return "av"
    if not source.is_dir():
        raise LayoutError(f"{source}: no such file or folder")
    if (source / "index.csv").is_file():
        return "av"
    if _find_lists(source, None, 1) is not None:
        return "ucf101"
    depth2 = any(p.suffix.lower() in VIDEO_SUFFIXES and p.is_file() for p in source.glob("*/*"))
    depth3 = any(p.suffix.lower() in VIDEO_SUFFIXES and p.is_file() for p in source.glob("*/*/*"))
    if depth2:
        return "tree"
    if depth3:
        return "talking_heads"
    raise LayoutError(f"{source}: no index.csv, no UCF-101 lists, no <class>/<video> or <speaker>/<video>/<clip> "
                      "files; pass --layout")


def list_entries(source: Path, layout: str, videos: Path | None = None, naming: str | None = None,
                 lists: Path | None = None, fold: int = 1, class_index: Path | None = None) -> list[Entry]:
    """The videos ``source`` lists, in its order (a file listed twice once, with its labels merged)."""
    if layout == "av":
        entries = _av_entries(source)
    elif layout in ("kinetics", "vggsound"):
        entries = _csv_entries(source, layout, videos or source.parent, naming or DEFAULT_NAMING[layout])
    elif layout == "audioset":
        entries = _audioset_entries(source, videos or source.parent, naming or DEFAULT_NAMING[layout], class_index)
    elif layout == "ucf101":
        entries = _ucf_entries(source, lists, fold)
    elif layout == "tree":
        entries = [Entry(p, [p.parent.name], source=str(p.relative_to(source))) for p in _videos(source, 2)]
    elif layout == "talking_heads":
        entries = [Entry(p, speaker=p.parent.parent.name, source=str(p.relative_to(source)))
                   for p in _videos(source, 3)]
    else:
        raise LayoutError(f"unknown layout {layout!r} ({', '.join(LAYOUTS)})")
    if not entries:
        raise LayoutError(f"{source}: the {layout} layout lists no video")
    for e in entries:
        for label in e.labels:
            if LABEL_SEP in label:  # the manifest joins a clip's labels with it
                raise LayoutError(f"{e.source or e.path}: the label {label!r} contains {LABEL_SEP!r}, which the "
                                  "manifest uses to join a clip's labels")
    return _merge(entries)


def _first_row(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if row and any(c.strip() for c in row):
                return row
    raise LayoutError(f"{path} is empty")


def _is_audioset(source: Path, first: list[str]) -> bool:
    """An AudioSet segments CSV: ``#`` comments naming its columns (``YTID, start_seconds, end_seconds,
    positive_labels``), that header without ``#``, or rows of an id, two times and labels."""
    if first[0].lstrip().startswith("#"):
        with source.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.lstrip().startswith("#"):
                    return False
                if "positive_labels" in line.lower() or "ytid" in line.lower():
                    return True
        return False
    cells = [c.strip().lower() for c in first]
    if "positive_labels" in cells or "ytid" in cells:
        return True
    return len(first) >= 4 and _is_number(first[1]) and _is_number(first[2]) and \
        Path(first[0].strip()).suffix.lower() not in VIDEO_SUFFIXES


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _videos(root: Path, depth: int) -> list[Path]:
    return sorted(p for p in root.glob("/".join(["*"] * depth)) if p.suffix.lower() in VIDEO_SUFFIXES)


def _merge(entries: list[Entry]) -> list[Entry]:
    out: dict[Path, Entry] = {}
    for e in entries:
        if e.path in out:
            kept = out[e.path]
            kept.labels += [lab for lab in e.labels if lab not in kept.labels]
        else:
            out[e.path] = e
    return list(out.values())


def _av_entries(source: Path) -> list[Entry]:
    from training.data.datasets import read_records

    try:
        records = read_records(source)
    except (KeyError, ValueError) as exc:
        raise LayoutError(f"{source}: not an AV dataset index ({exc})") from exc
    return [Entry(r.video, list(r.labels), split=r.split or "", start_s=r.start_s, end_s=r.end_s,
                  source=str(r.video)) for r in records]


def _video_files(videos: Path) -> dict[str, Path]:
    """Every video under ``videos`` by file name (the first, in sorted order, of a name found twice)."""
    files: dict[str, Path] = {}
    for p in sorted(videos.rglob("*")):
        if p.suffix.lower() in VIDEO_SUFFIXES:
            files.setdefault(p.name, p)
    return files


def _file_name(naming: str, youtube_id: str, start: float, end: float) -> str:
    """A clip's file name from the ``--naming`` pattern (``start``/``end`` in whole seconds, ``*_ms`` exact)."""
    try:
        return naming.format(youtube_id=youtube_id, start=int(start), end=int(end), start_ms=int(round(start * 1000)),
                             end_ms=int(round(end * 1000)))
    except (KeyError, IndexError, ValueError) as exc:
        raise LayoutError(f"--naming {naming!r}: {exc} (fields: youtube_id, start, end, start_ms, end_ms)") from exc


def _csv_entries(source: Path, layout: str, videos: Path, naming: str) -> list[Entry]:
    """Kinetics (``label,youtube_id,time_start,time_end,split`` with a header) or VGGSound (``youtube_id,start,
    label,split`` without one); files are looked up by name anywhere under ``videos``."""
    files = _video_files(videos)
    entries = []
    with source.open(newline="", encoding="utf-8") as fh:
        if layout == "kinetics":
            reader: Iterator[dict[str, str]] = csv.DictReader(fh)
            need = {"youtube_id", "time_start", "time_end"}
            if not need <= set(reader.fieldnames or []):
                raise LayoutError(f"{source}: a Kinetics CSV needs the columns {sorted(need)}")
        else:
            reader = (dict(zip(("youtube_id", "start", "label", "split"), row, strict=False))
                      for row in csv.reader(fh) if row)
        for line, row in enumerate(reader, start=2 if layout == "kinetics" else 1):
            try:
                start = int(float(row.get("time_start", row.get("start", ""))))
                end = int(float(row["time_end"])) if layout == "kinetics" else start + VGGSOUND_SECONDS
            except (KeyError, TypeError, ValueError) as exc:
                raise LayoutError(f"{source}:{line}: no start time ({exc})") from exc
            ytid = (row.get("youtube_id") or "").strip()
            name = _file_name(naming, ytid, start, end)
            label = (row.get("label") or "").strip()
            entries.append(Entry(files.get(name, videos / name), [label] if label else [],
                                 split=_split_name((row.get("split") or "").strip()), source=f"{source.name}:{line}"))
    return entries


def _audioset_entries(source: Path, videos: Path, naming: str, class_index: Path | None) -> list[Entry]:
    """An AudioSet segments CSV: ``YTID, start_seconds, end_seconds, "id,id,..."`` rows after ``#`` comments; every
    row is one clip with all its labels, named through ``class_index`` where it names them."""
    if class_index is None and (source.parent / AUDIOSET_CLASS_INDEX).is_file():
        class_index = source.parent / AUDIOSET_CLASS_INDEX
    names = read_class_index(class_index) if class_index is not None else {}
    name = source.name.lower()
    split = "test" if "eval" in name else "train" if "train" in name else ""
    files = _video_files(videos)
    entries, unnamed = [], set()
    with source.open(newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.reader(fh, skipinitialspace=True), start=1):
            if not row or not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if row[0].strip().lower() == "ytid":  # the column names, without '#'
                continue
            if len(row) < 4:
                raise LayoutError(f"{source}:{line}: an AudioSet row is YTID, start_seconds, end_seconds, "
                                  f"positive_labels; got {row}")
            try:
                start, end = float(row[1]), float(row[2])
            except ValueError as exc:
                raise LayoutError(f"{source}:{line}: no start/end time ({exc})") from exc
            # the labels are one quoted cell; unquoted, they spill over the following cells
            ids = list(dict.fromkeys(i.strip() for i in ",".join(row[3:]).split(",") if i.strip()))
            unnamed.update(i for i in ids if names and i not in names)
            ytid = row[0].strip()
            file = _file_name(naming, ytid, start, end)
            entries.append(Entry(files.get(file, videos / file), [names.get(i, i) for i in ids], split=split,
                                 source=f"{source.name}:{line}"))
    if unnamed:
        log.warning("%d label ids are not in %s; kept as ids: %s", len(unnamed), class_index,
                    ", ".join(sorted(unnamed)[:10]))
    return entries


def read_class_index(path: Path) -> dict[str, str]:
    """AudioSet's ``class_labels_indices.csv`` (``index,mid,display_name``): label id -> display name."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        if not {"mid", "display_name"} <= set(reader.fieldnames or []):
            raise LayoutError(f"{path}: a class index needs the columns index,mid,display_name")
        names = {row["mid"].strip(): row["display_name"].strip() for row in reader if row.get("mid")}
    dupes = [n for n, c in Counter(names.values()).items() if c > 1]
    if dupes:
        raise LayoutError(f"{path}: display names {dupes[:5]} name several ids")
    return names


def _split_name(split: str) -> str:
    return {"validate": "val", "validation": "val"}.get(split.lower(), split.lower())


def _find_lists(root: Path, lists: Path | None, fold: int) -> Path | None:
    candidates = [lists] if lists is not None else [root, root / "ucfTrainTestlist", root.parent / "ucfTrainTestlist"]
    for folder in candidates:
        if folder is not None and (folder / f"trainlist{fold:02d}.txt").is_file():
            return folder
    return None


def _ucf_entries(root: Path, lists: Path | None, fold: int) -> list[Entry]:
    folder = _find_lists(root, lists, fold)
    if folder is None:
        raise LayoutError(f"{root}: no trainlist{fold:02d}.txt in {lists or 'it, ucfTrainTestlist/ or beside it'}")
    entries = []
    for split, name in (("train", f"trainlist{fold:02d}.txt"), ("test", f"testlist{fold:02d}.txt")):
        path = folder / name
        if not path.is_file():
            raise LayoutError(f"{path} is missing")
        for line in path.read_text(encoding="utf-8").splitlines():
            rel = line.split()[0] if line.strip() else ""
            if not rel:
                continue
            rel_path = Path(rel.replace("\\", "/"))
            entries.append(Entry(root / rel_path, [rel_path.parts[0]], split=split, source=f"{name}:{rel}"))
    return entries


def assign_splits(entries: Sequence[Entry], val_fraction: float, by_speaker: bool) -> None:
    """Entries without a split get ``val`` for a ``val_fraction`` of them and ``train`` otherwise, by a hash of the
    video's path (or of its speaker, so that the splits share no speaker): stable as the collection grows."""
    if val_fraction <= 0:
        return
    for e in entries:
        if e.split:
            continue
        key = e.speaker if by_speaker and e.speaker else str(e.path)
        h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
        e.split = "val" if h < val_fraction else "train"


# ------------------------------------------------------------------------------------------------ probing


def check_file(entry: Entry, checks: Checks) -> ManifestRow | Skipped:
    """Probe one file and decode its first and last window: a manifest row, or why it is skipped."""
    path = str(entry.path)
    if not entry.path.is_file():
        return Skipped(path, "missing", f"no such file (listed by {entry.source})" if entry.source else "no such file")
    try:
        info = probe(entry.path, checks.limits)
    except MediaError as exc:
        return Skipped(path, "over_limits" if exc.status == 413 else "undecodable", exc.detail)
    if not info.has_audio and not checks.allow_silent:
        return Skipped(path, "no_audio", "the file has no audio stream")
    try:
        head = decode_span(entry.path, CHECK_SPEC, 0.0, CHECK_SPEC.window_s, checks.limits)
        end = info.duration_s if math.isfinite(info.duration_s) else checks.limits.max_duration_s
        tail = decode_span(entry.path, CHECK_SPEC, max(0.0, end - CHECK_SPEC.window_s), end + 1.0, checks.limits)
    except MediaError as exc:
        return Skipped(path, "over_limits" if exc.status == 413 else "undecodable", exc.detail)
    duration = tail.duration_s if tail.duration_s is not None else info.duration_s
    if math.isfinite(info.duration_s) and duration < info.duration_s - max(0.5, 0.05 * info.duration_s):
        return Skipped(path, "undecodable", f"truncated: the streams decode to {duration:.2f} s of the "
                                            f"{info.duration_s:.2f} s the header gives")
    if info.has_audio and not (head.has_audio or tail.has_audio) and not checks.allow_silent:
        return Skipped(path, "no_audio", "the audio stream decodes to nothing")
    if duration < checks.min_duration_s:
        return Skipped(path, "too_short", f"{duration:.2f} s < --min-duration {checks.min_duration_s:g} s")
    if entry.start_s is not None and entry.end_s is not None and entry.end_s - entry.start_s < checks.min_duration_s:
        return Skipped(path, "too_short", f"the labelled span {entry.start_s:g}-{entry.end_s:g} s is shorter than "
                                          f"--min-duration {checks.min_duration_s:g} s")
    return ManifestRow(path=path, duration_s=duration, fps=info.fps, width=info.width, height=info.height,
                       has_audio=info.has_audio and (head.has_audio or tail.has_audio), labels=tuple(entry.labels),
                       split=entry.split, speaker=entry.speaker, start_s=entry.start_s, end_s=entry.end_s)


def _check_job(args: tuple[Entry, Checks, dict[str, ClipSpec]]) -> tuple[ManifestRow | Skipped, dict[str, Decoded]]:
    """Check one file and, when it is usable and a cache is asked for, decode it whole at each cache's spec."""
    entry, checks, specs = args
    try:
        result = check_file(entry, checks)
        decoded = {}
        if isinstance(result, ManifestRow):
            for key, spec in specs.items():
                decoded[key] = decode(entry.path, spec, checks.limits)
        return result, decoded
    except MediaError as exc:  # the whole file decoded for the cache: broken past its ends
        return Skipped(str(entry.path), "undecodable", exc.detail), {}
    except Exception as exc:  # noqa: BLE001 - one bad file must not end a run over a million
        return Skipped(str(entry.path), "undecodable", f"{type(exc).__name__}: {exc}"), {}


def prepare(source: str | Path, out: str | Path, layout: str = "auto", workers: int = 2,
            videos: str | Path | None = None, naming: str | None = None, lists: str | Path | None = None,
            fold: int = 1, val_fraction: float = 0.0, checks: Checks = Checks(), progress: bool = True,
            cache: Sequence[ClipSpec] = (), class_index: str | Path | None = None) -> dict:
    """Write the manifest ``out`` and its skipped-files report (and, for each clip spec in ``cache``, the decoded
    cache of the usable clips beside it, :mod:`training.data.cache`); returns the summary the CLI prints."""
    source, out = Path(source), Path(out)
    if layout == "auto":
        layout = detect_layout(source)
    if naming is not None and LABEL_SEP in naming:
        raise LayoutError(f"--naming {naming!r} must not contain {LABEL_SEP!r}")
    entries = list_entries(source, layout, Path(videos) if videos else None, naming,
                           Path(lists) if lists else None, fold, Path(class_index) if class_index else None)
    assign_splits(entries, val_fraction, by_speaker=layout == "talking_heads")
    specs = {spec_key(s): s for s in cache}
    writers = {key: CacheWriter(cache_dir(out, spec), spec) for key, spec in specs.items()}
    jobs = [(e, checks, specs) for e in entries]
    base = out.parent.resolve()
    rows: list[ManifestRow] = []
    skipped: list[Skipped] = []
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=worker_context()))
            results = pool.map(_check_job, jobs, chunksize=max(1, min(16, len(jobs) // (8 * workers))))
        else:
            results = map(_check_job, jobs)
        for result, decoded in _progress(results, len(jobs), progress):  # in order, written as they come
            if isinstance(result, Skipped):
                skipped.append(result)
                continue
            row = _relative(result, base)
            rows.append(row)
            for key, d in decoded.items():
                writers[key].add(row.path, d)
    write_manifest(out, rows)
    caches = {key: str(w.close()) for key, w in writers.items()}
    report = skipped_path(out)
    tmp = report.with_name(f".{report.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "reason", "detail"])
        w.writerows([s.path, s.reason, s.detail] for s in skipped)
    os.replace(tmp, report)
    labels = Counter(lab for r in rows for lab in r.labels)
    summary = {
        "manifest": str(out), "skipped_report": str(report), "layout": layout, "listed": len(entries),
        "clips": len(rows), "hours": round(sum(r.duration_s for r in rows) / 3600, 3),
        "skipped": {reason: n for reason in REASONS if (n := sum(s.reason == reason for s in skipped))},
        "labels": len(labels), "multi_label_clips": sum(len(r.labels) > 1 for r in rows),
        "splits": dict(sorted(Counter(r.split for r in rows).items())),
        "speakers": len({r.speaker for r in rows if r.speaker}), "silent_clips": sum(not r.has_audio for r in rows),
    }
    if caches:
        summary["caches"] = caches
    log.info("prepare: %d of %d clips usable, skipped %s", len(rows), len(entries), summary["skipped"])
    return summary


def skipped_path(manifest: Path) -> Path:
    return manifest.with_name(f"{manifest.stem}.skipped.csv")


def _relative(row: ManifestRow, base: Path) -> ManifestRow:
    """Paths under the manifest's folder are written relative to it (move both together); others absolute."""
    path = Path(row.path).resolve()
    try:
        rel = str(path.relative_to(base))
    except ValueError:
        rel = str(path)
    return ManifestRow(**{**row.__dict__, "path": rel})


def _progress(it, total: int, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc="prepare", unit="file", dynamic_ncols=True)


def add_parser(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    """``prepare`` on the training CLI."""
    p = sub.add_parser("prepare", help="probe a collection (AV dir, Kinetics/VGGSound/AudioSet CSV, UCF-101, talking "
                                       "heads) into a clip manifest and a skipped-files report")
    p.add_argument("source", help="dataset folder or CSV")
    p.add_argument("--out", required=True, help="manifest CSV to write (the report goes beside it: *.skipped.csv)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS)
    p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)), help="probing processes")
    p.add_argument("--videos", help="kinetics/vggsound/audioset: the folder the files are under (default: the CSV's)")
    p.add_argument("--naming", help="kinetics/vggsound/audioset: file name pattern, e.g. "
                                    f"'{{youtube_id}}_{{start_ms}}.mp4' (defaults: {DEFAULT_NAMING})")
    p.add_argument("--class-index", help=f"audioset: {AUDIOSET_CLASS_INDEX} (index,mid,display_name) naming the label "
                                         "ids (default: that file beside the CSV, if there; else labels stay ids)")
    p.add_argument("--lists", help="ucf101: folder of trainlistNN.txt/testlistNN.txt")
    p.add_argument("--fold", type=int, default=1, help="ucf101: which official split (1-3)")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="layouts without official splits: this fraction goes to 'val' (talking heads: by speaker)")
    p.add_argument("--min-duration", type=float, default=1.0, help="skip clips shorter than this (s)")
    p.add_argument("--max-duration", type=float, default=MediaLimits.max_duration_s, help="skip longer clips (s)")
    p.add_argument("--allow-silent", action="store_true", help="keep clips without audio (has_audio=0)")
    p.add_argument("--cache", default="", metavar="MODEL[,MODEL]",
                   help="also decode every usable clip at these models' clip specs into MANIFEST.cache/ (sharded "
                        "arrays that training memory-maps instead of decoding)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args) -> int:  # noqa: ANN001
    import sys

    if not 0 <= args.val_fraction < 1:
        print("prepare: --val-fraction must be in [0, 1)", file=sys.stderr)
        return 2
    checks = Checks(min_duration_s=args.min_duration, allow_silent=args.allow_silent,
                    limits=MediaLimits(max_duration_s=args.max_duration))
    try:
        from training.models import clip_spec_for

        cache = [clip_spec_for(name) for name in filter(None, args.cache.split(","))]
        summary = prepare(args.source, args.out, layout=args.layout, workers=args.workers, videos=args.videos,
                          naming=args.naming, lists=args.lists, fold=args.fold, val_fraction=args.val_fraction,
                          checks=checks, progress=not args.quiet, cache=cache, class_index=args.class_index)
    except (LayoutError, FileNotFoundError, KeyError) as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0

