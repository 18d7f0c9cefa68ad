"""``python -m training prepare``: each layout of real mp4 files (with corrupt, truncated, silent and missing ones
mixed in) becomes a manifest of the usable clips, with labels, splits and speakers from the data, and a report that
gives every skipped file its reason."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from layouts import copy, corrupt_random, silent, synth_videos

from training.cli import main
from training.data.collection import ManifestError, read_manifest
from training.data.prepare import Entry, assign_splits, detect_layout, skipped_path


def run_prepare(args: list[str]) -> tuple[int, dict | None, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["prepare", *args])
    lines = out.getvalue().strip().splitlines()
    return code, json.loads(lines[-1]) if lines else None, err.getvalue()


def skipped(manifest: Path) -> dict[str, tuple[str, str]]:
    with skipped_path(manifest).open(newline="") as fh:
        return {row["path"]: (row["reason"], row["detail"]) for row in csv.DictReader(fh)}


def manifest_rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_ucf101_tree_with_official_lists(ucf_layout, tmp_path):
    source, reasons = ucf_layout
    out = tmp_path / "ucf.csv"
    code, summary, _ = run_prepare([str(source), "--out", str(out), "--workers", "2", "-q"])
    assert code == 0 and summary["layout"] == "ucf101"
    assert summary["listed"] == 16 and summary["clips"] == 12
    assert summary["skipped"] == {"missing": 1, "undecodable": 2, "no_audio": 1}
    assert summary["splits"] == {"test": 4, "train": 8} and summary["labels"] == 4
    assert {p: r for p, (r, _) in skipped(out).items()} == reasons
    rows = manifest_rows(out)
    assert all(r["label"] == Path(r["path"]).parent.name for r in rows)  # the class folder
    assert all(float(r["duration_s"]) == pytest.approx(4.0, abs=0.05) and r["has_audio"] == "1" for r in rows)
    assert {(r["width"], r["height"], r["fps"]) for r in rows} == {("128", "128", "24")}
    train, test = read_manifest(out), read_manifest(out, val=True)
    assert len(train) == 8 and len(test) == 4 and train.labels == test.labels == sorted({r["label"] for r in rows})
    assert all(train.path(i).is_file() for i in range(len(train)))


def test_kinetics_csv_as_it_ships(kinetics_layout, tmp_path):
    source, reasons = kinetics_layout
    out = tmp_path / "k" / "kinetics.csv"
    code, summary, _ = run_prepare([str(source), "--out", str(out), "--workers", "1", "-q"])
    assert code == 0 and summary["layout"] == "kinetics"
    assert summary["clips"] == 12 and summary["skipped"] == {"missing": 1, "undecodable": 2, "no_audio": 1}
    report = skipped(out)
    assert {p: r for p, (r, _) in report.items()} == reasons
    cut = next(detail for p, (_, detail) in report.items() if "cutshort" in p)
    assert cut.startswith("truncated: the streams decode to")  # headers promise 4 s, the streams hold less
    rows = manifest_rows(out)
    assert {r["label"] for r in rows} == {"ball click", "ball ring", "bar hum", "bar rasp"}  # as the CSV names them
    assert {r["split"] for r in rows} == {"train", "val"}
    assert all(Path(r["path"]).name.endswith(("_000000_000010.mp4", "_000010_000020.mp4", "_000020_000030.mp4"))
               for r in rows)


def test_vggsound_csv_naming_and_multi_label(action_ds, tmp_path):
    """No header, ``youtube_id,start,label,split``; the file name pattern is a parameter; a clip listed under two
    labels becomes one multi-label row."""
    videos = synth_videos(action_ds)
    rows = []
    for k, (src, label) in enumerate(videos[:4]):
        copy(src, tmp_path / "vgg" / f"id{k}_{30 * k * 1000}.mp4")  # start in ms: not the default naming
        rows.append([f"id{k}", 30 * k, label.replace("_", " "), "train" if k < 3 else "test"])
    rows.append(["id0", 0, "people marching, loud", "train"])  # a second label for id0, with a comma
    rows.append(["id9", 10, "dog barking", "train"])  # no such file
    csv_path = tmp_path / "vgg" / "vggsound.csv"
    with csv_path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    out = tmp_path / "vgg.csv"
    code, summary, _ = run_prepare([str(csv_path), "--out", str(out), "--naming", "{youtube_id}_{start_ms}.mp4",
                                    "--workers", "1", "-q"])
    assert code == 0 and summary["layout"] == "vggsound"
    assert summary["clips"] == 4 and summary["skipped"] == {"missing": 1} and summary["multi_label_clips"] == 1
    table = read_manifest(out, split="train")
    assert table.multi_label and table.row_labels(0) == ["ball click", "people marching, loud"]
    with pytest.raises(ManifestError, match="has 2 labels"):
        table.label_index(table.labels)
    # the default naming (<id>_<start:06d>.mp4) finds none of these files: all missing, reported as such
    code, summary, _ = run_prepare([str(csv_path), "--out", str(tmp_path / "none.csv"), "--workers", "1", "-q"])
    assert code == 0 and summary["clips"] == 0 and summary["skipped"] == {"missing": 5}


def test_talking_heads_speakers_and_speaker_disjoint_splits(heads_layout, tmp_path):
    source, reasons = heads_layout
    out = tmp_path / "heads.csv"
    code, summary, _ = run_prepare([str(source), "--out", str(out), "--workers", "2", "-q"])
    assert code == 0 and summary["layout"] == "talking_heads"
    assert summary["clips"] == 8 and summary["speakers"] == 4 and summary["labels"] == 0
    assert {p: r for p, (r, _) in skipped(out).items()} == reasons
    rows = manifest_rows(out)
    assert all(r["speaker"] == Path(r["path"]).parts[-3] and r["label"] == "" for r in rows)
    # --val-fraction splits by speaker: no speaker on both sides
    entries = [Entry(Path(f"s{k % 40}/v{k}/c.mp4"), speaker=f"s{k % 40}") for k in range(400)]
    assign_splits(entries, 0.25, by_speaker=True)
    sides = {}
    for e in entries:
        sides.setdefault(e.speaker, set()).add(e.split)
    assert all(len(s) == 1 for s in sides.values())
    n_val = sum(s == {"val"} for s in sides.values())
    assert 3 <= n_val <= 18  # about a quarter of 40 speakers


def test_av_dataset_directory_keeps_labels_and_spans(action_ds, tmp_path):
    out = tmp_path / "av.csv"
    code, summary, _ = run_prepare([str(action_ds), "--out", str(out), "--workers", "2", "-q"])
    assert code == 0 and summary["layout"] == "av" and summary["clips"] == 16 and summary["skipped"] == {}
    rows = manifest_rows(out)
    assert [float(r["start_s"]) for r in rows] == [0.0] * 16 and {r["end_s"] for r in rows} == {"4"}
    assert Path(rows[0]["path"]).is_absolute()  # outside the manifest's folder: absolute


def test_checks_too_short_over_limits_and_allow_silent(action_ds, tmp_path):
    tree = tmp_path / "tree"
    (src, label), *_ = synth_videos(action_ds)
    copy(src, tree / label / "a.mp4")
    silent(src, tree / label / "quiet.mp4")
    corrupt_random(tree / label / "b.mp4")
    code, summary, _ = run_prepare([str(tree), "--out", str(tmp_path / "short.csv"), "--min-duration", "5", "-q",
                                    "--workers", "1"])
    assert code == 0 and summary["layout"] == "tree"
    assert summary["skipped"] == {"too_short": 1, "undecodable": 1, "no_audio": 1}
    code, summary, _ = run_prepare([str(tree), "--out", str(tmp_path / "long.csv"), "--max-duration", "2", "-q",
                                    "--workers", "1"])
    assert summary["skipped"] == {"over_limits": 2, "undecodable": 1}  # the silent one is over the limit first
    assert "at most 2 s" in skipped(tmp_path / "long.csv")[str(tree / label / "a.mp4")][1]
    code, summary, _ = run_prepare([str(tree), "--out", str(tmp_path / "all.csv"), "--allow-silent", "-q",
                                    "--workers", "1"])
    assert summary["clips"] == 2 and summary["silent_clips"] == 1
    assert read_manifest(tmp_path / "all.csv").has_audio.tolist().count(False) == 1


def test_bad_sources_are_clear_errors(ucf_manifest, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, summary, err = run_prepare([str(empty), "--out", str(tmp_path / "x.csv"), "-q"])
    assert code == 2 and summary is None and "pass --layout" in err
    code, _, err = run_prepare([str(ucf_manifest[0]), "--out", str(tmp_path / "x.csv"), "-q"])
    assert code == 2 and "already a clip manifest" in err
    code, _, err = run_prepare([str(tmp_path / "nope"), "--out", str(tmp_path / "x.csv"), "-q"])
    assert code == 2 and "no such file or folder" in err
    code, _, err = run_prepare([str(empty), "--layout", "ucf101", "--out", str(tmp_path / "x.csv"), "-q"])
    assert code == 2 and "trainlist01.txt" in err
    with pytest.raises(ManifestError, match="no split 'dev'"):
        read_manifest(f"{ucf_manifest[0]}#dev")


def test_layout_detection(ucf_layout, kinetics_layout, heads_layout, action_ds):
    assert detect_layout(ucf_layout[0]) == "ucf101"
    assert detect_layout(kinetics_layout[0]) == "kinetics"
    assert detect_layout(heads_layout[0]) == "talking_heads"
    assert detect_layout(action_ds) == "av" and detect_layout(action_ds / "index.csv") == "av"


def test_manifest_table_is_numpy_arrays(ucf_manifest):
    """No Python object per row: DataLoader workers share the table's pages (see the memory benchmark)."""
    table = read_manifest(ucf_manifest[0])
    arrays = [v for v in vars(table).values() if isinstance(v, np.ndarray)]
    assert len(arrays) == 9 and all(a.dtype != object for a in arrays)
    sub = table.take([3, 1])
    assert [sub.path(0), sub.path(1)] == [table.path(3), table.path(1)]
    assert sub.row_labels(0) == table.row_labels(3)


def test_manifest_and_collection_move_together(ucf_layout, tmp_path):
    """Paths under the manifest's folder are written relative to it: moving both keeps the manifest valid."""
    source, _ = ucf_layout
    here = shutil.copytree(source.parent, tmp_path / "a")
    code, summary, _ = run_prepare([str(here / source.name), "--out", str(here / "ucf.csv"), "-q", "--workers", "1"])
    assert code == 0 and summary["clips"] == 12
    assert all(not Path(r["path"]).is_absolute() for r in manifest_rows(here / "ucf.csv"))
    moved = here.rename(tmp_path / "b")
    table = read_manifest(moved / "ucf.csv")
    assert all(table.path(i).is_file() and moved in table.path(i).parents for i in range(len(table)))


def test_evaluate_and_export_read_a_manifest_split(ucf_manifest):
    """``evaluate --data MANIFEST.csv#test`` and ``export --eval-data`` read records through read_records."""
    from training.data.datasets import read_records, resolve_data

    manifest, _ = ucf_manifest
    test = read_records(resolve_data(f"{manifest}#test"))
    assert len(test) == 4 and {r.split for r in test} == {"test"} and all(r.video.is_file() for r in test)
    every = read_records(manifest)
    assert len(every) == 12 and sorted({r.label for r in every}) == read_manifest(manifest).labels
    with pytest.raises(FileNotFoundError):
        resolve_data(f"{manifest.parent / 'nope.csv'}#test")
