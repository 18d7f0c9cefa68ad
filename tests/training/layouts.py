"""Real collections in the layouts ``python -m training prepare`` reads, built from SynthAV's mp4 files (copied under
the names each layout uses), with bad files mixed in: random bytes, a truncated file, a file without an audio
stream, and a listed file that does not exist. Each builder returns the SOURCE to pass to ``prepare`` and the bad
files with the reason ``prepare`` must give."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import av
import numpy as np


def corrupt_random(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 30_000, dtype=np.uint8).tobytes())
    return path


def truncated(src: Path, path: Path) -> Path:
    """The first 40 % of a real file: its index is gone with the rest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.4)])
    return path


def truncated_faststart(src: Path, path: Path) -> Path:
    """``src`` with its index moved to the front (``movflags=faststart``), cut at 60 %: the headers still promise
    the whole duration, the streams end early."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f"{path.stem}.full{path.suffix}")
    with av.open(str(src)) as inp, av.open(str(aside), "w", options={"movflags": "faststart"}) as out:
        mapping = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:
                continue
            packet.stream = mapping[packet.stream.index]
            out.mux(packet)
    data = aside.read_bytes()
    aside.unlink()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def silent(src: Path, path: Path) -> Path:
    """``src``'s video stream alone (packets copied): a real, playable file without audio."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as inp, av.open(str(path), "w") as out:
        v = inp.streams.video[0]
        ov = out.add_stream_from_template(v)
        for packet in inp.demux(v):
            if packet.dts is None:
                continue
            packet.stream = ov
            out.mux(packet)
    return path


def copy(src: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, path)
    return path


def synth_videos(ds: Path) -> list[tuple[Path, str]]:
    """(mp4, label) of a SynthAV dataset directory."""
    with (ds / "index.csv").open(newline="") as fh:
        return [(ds / row["video"], row["label"]) for row in csv.DictReader(fh)]


def build_ucf101(root: Path, action_ds: Path, classes: int = 4) -> tuple[Path, dict[str, str]]:
    """``root/UCF-101/<class>/v_<class>_gNN_cNN.mp4`` and ``root/ucfTrainTestlist/{train,test}list01.txt``: per
    class two training videos and one test video (each SynthAV clip used under two group names)."""
    videos = root / "UCF-101"
    by_class: dict[str, list[Path]] = {}
    for path, label in synth_videos(action_ds):
        by_class.setdefault(label, []).append(path)
    train, test = [], []
    for label in sorted(by_class)[:classes]:
        srcs = by_class[label]
        for g, split in ((1, train), (2, train), (3, test)):
            rel = f"{label}/v_{label}_g{g:02d}_c01.mp4"
            copy(srcs[g % len(srcs)], videos / rel)
            split.append(rel)
    a_class, a_src = sorted(by_class)[0], by_class[sorted(by_class)[0]][0]
    bad = {
        f"{a_class}/v_{a_class}_g08_c01.mp4": ("undecodable", corrupt_random),
        f"{a_class}/v_{a_class}_g09_c01.mp4": ("undecodable", lambda p: truncated(a_src, p)),
        f"{a_class}/v_{a_class}_g10_c01.mp4": ("no_audio", lambda p: silent(a_src, p)),
        f"{a_class}/v_{a_class}_g11_c01.mp4": ("missing", None),
    }
    reasons = {}
    for rel, (reason, make) in bad.items():
        if make is not None:
            make(videos / rel)
        train.append(rel)
        reasons[str(videos / rel)] = reason
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    index = {label: k + 1 for k, label in enumerate(sorted(by_class)[:classes])}
    (lists / "trainlist01.txt").write_text("".join(f"{r} {index[r.split('/')[0]]}\r\n" for r in train))
    (lists / "testlist01.txt").write_text("".join(f"{r}\r\n" for r in test))
    (lists / "classInd.txt").write_text("".join(f"{k} {label}\n" for label, k in index.items()))
    return videos, reasons


def build_kinetics(root: Path, action_ds: Path, classes: int = 4) -> tuple[Path, dict[str, str]]:
    """``root/kinetics.csv`` (``label,youtube_id,time_start,time_end,split``) and the files
    ``root/videos/<split>/<youtube_id>_<start:06d>_<end:06d>.mp4``: per class two train and one val clip."""
    rows, reasons = [], {}
    by_class: dict[str, list[Path]] = {}
    for path, label in synth_videos(action_ds):
        by_class.setdefault(label, []).append(path)
    n = 0
    for label in sorted(by_class)[:classes]:
        for k, split in enumerate(("train", "train", "val")):
            ytid, start = f"yt{n:04d}-{label[:3]}", 10 * k
            copy(by_class[label][k % 2], root / "videos" / split / f"{ytid}_{start:06d}_{start + 10:06d}.mp4")
            rows.append([label.replace("_", " "), ytid, start, start + 10, split])
            n += 1
    src = by_class[sorted(by_class)[0]][0]
    label = sorted(by_class)[0].replace("_", " ")
    for ytid, reason, make in (("badbytes", "undecodable", corrupt_random),
                               ("cutshort", "undecodable", lambda p: truncated_faststart(src, p)),
                               ("nosound", "no_audio", lambda p: silent(src, p)),
                               ("gone", "missing", None)):
        path = root / "videos" / "train" / f"{ytid}_000000_000010.mp4"
        if make is not None:
            make(path)
        else:  # a file found nowhere is reported under the folder searched
            path = root / path.name
        rows.append([label, ytid, 0, 10, "train"])
        reasons[str(path)] = reason
    csv_path = root / "kinetics.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        w.writerows(rows)
    return csv_path, reasons


def build_talking_heads(root: Path, speech_ds: Path, speakers: int = 4) -> tuple[Path, dict[str, str]]:
    """``root/<speaker>/<video>/<clip>.mp4``: ``speakers`` speakers with two videos of one clip each."""
    srcs = [p for p, _ in synth_videos(speech_ds)]
    k = 0
    for s in range(speakers):
        for v in range(2):
            copy(srcs[k % len(srcs)], root / f"id{s:05d}" / f"vid{v:02d}" / "00001.mp4")
            k += 1
    reasons = {
        str(corrupt_random(root / "id00000" / "vid09" / "00001.mp4")): "undecodable",
        str(silent(srcs[0], root / "id00001" / "vid09" / "00001.mp4")): "no_audio",
    }
    return root, reasons


AUDIOSET_HEADER = ("# Segments csv created Sun Mar  5 10:54:31 2017\n"
                   "# num_ytids={n}, num_segs={n}, num_unique_labels=9, num_positive_labels={p}\n"
                   "# YTID, start_seconds, end_seconds, positive_labels\n")


def audioset_ids(synth_label: str) -> list[str]:
    """A SynthAV class as AudioSet-style label ids: what is seen and what is heard (``ball_click`` -> the object
    ``/m/ball`` and the sound ``/m/click``), so that classes share labels and a clip carries two."""
    thing, sound = synth_label.split("_")
    return [f"/m/{thing}", f"/m/{sound}"]


def build_audioset(root: Path, action_ds: Path) -> tuple[Path, Path, dict[str, str]]:
    """``root/balanced_train_segments.csv`` (SynthAV clips 0-11) and ``root/eval_segments.csv`` (clips 8-15) as
    AudioSet ships them (comment lines, ``YTID, start_seconds, end_seconds, "id,id"``), the files
    ``root/videos/<YTID>_<start_ms>.mp4``, and ``root/class_labels_indices.csv`` naming every id but ``/m/voice``.
    The training CSV also lists a corrupt, a silent and a missing file."""
    videos = synth_videos(action_ds)
    ids = sorted({i for _, label in videos for i in audioset_ids(label)})
    with (root / "class_labels_indices.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "mid", "display_name"])
        w.writerows([k, mid, mid[3:].capitalize() + (", loud" if mid == "/m/buzz" else "")]
                    for k, mid in enumerate(ids) if mid != "/m/voice")

    def write(name: str, rows: list[tuple[str, float, list[str]]]) -> Path:
        path = root / name
        lines = [f'{ytid}, {start:.3f}, {start + 10:.3f}, "{",".join(labels)}"\n' for ytid, start, labels in rows]
        path.write_text(AUDIOSET_HEADER.format(n=len(rows), p=sum(len(r[2]) for r in rows)) + "".join(lines))
        return path

    def clip_rows(indices: range, prefix: str) -> list[tuple[str, float, list[str]]]:
        rows = []
        for k in indices:
            src, label = videos[k]
            ytid, start = f"-{prefix}{k:02d}_x", 2.5 * (k % 3)  # ids hold - and _, as YouTube's do
            copy(src, root / "videos" / f"{ytid}_{int(start * 1000)}.mp4")
            rows.append((ytid, start, audioset_ids(label)))
        return rows

    train = clip_rows(range(12), "tr")
    src = videos[0][0]
    reasons = {
        str(corrupt_random(root / "videos" / "badbytes_0.mp4")): "undecodable",
        str(silent(src, root / "videos" / "nosound_0.mp4")): "no_audio",
        str(root / "videos" / "gone_0.mp4"): "missing",
    }
    train += [(Path(p).stem.rsplit("_", 1)[0], 0.0, ["/m/ball"]) for p in reasons]
    return write("balanced_train_segments.csv", train), write("eval_segments.csv", clip_rows(range(8, 16), "ev")), \
        reasons
