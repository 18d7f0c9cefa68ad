"""Multi-label AudioSet-style data: ``prepare`` reads AudioSet's segments CSV (and class index) from real mp4 files
with bad ones mixed in, keeping every label of a clip; a label cell of several ``;``-joined labels, manifests that
know they are multi-label, and multi-hot targets."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from layouts import audioset_ids, build_audioset, synth_videos
from test_prepare import run_prepare, skipped
from test_streaming import write_rows

from training.data.collection import MultiHot, read_manifest
from training.data.datasets import read_records
from training.data.prepare import detect_layout


def display_name(mid: str) -> str:
    """As build_audioset's class index names an id (it lacks /m/voice, which stays an id)."""
    return {"/m/buzz": "Buzz, loud", "/m/voice": mid}.get(mid, mid[3:].capitalize())


@pytest.fixture(scope="module")
def audioset(action_ds, tmp_path_factory):
    """The AudioSet-style folder, prepared: (train manifest, eval manifest, train summary, eval summary, reasons)."""
    root = tmp_path_factory.mktemp("audioset")
    train_csv, eval_csv, reasons = build_audioset(root, action_ds)
    train, evals = root / "manifests" / "train.csv", root / "manifests" / "eval.csv"
    code, train_summary, err = run_prepare([str(train_csv), "--videos", str(root / "videos"), "--out", str(train),
                                            "--workers", "2", "-q"])  # the class index found beside the CSV
    assert code == 0, err
    code, eval_summary, err = run_prepare([str(eval_csv), "--videos", str(root / "videos"), "--out", str(evals),
                                           "--class-index", str(root / "class_labels_indices.csv"), "-q",
                                           "--workers", "1"])
    assert code == 0, err
    return train, evals, train_summary, eval_summary, reasons


def test_prepare_reads_audioset_segments_with_all_labels(audioset, action_ds):
    train, evals, summary, eval_summary, reasons = audioset
    assert detect_layout(train.parent.parent / "balanced_train_segments.csv") == "audioset"
    assert summary["layout"] == "audioset" and summary["listed"] == 15 and summary["clips"] == 12
    assert summary["skipped"] == {"missing": 1, "undecodable": 1, "no_audio": 1}
    assert {p: r for p, (r, _) in skipped(train).items()} == reasons
    assert summary["multi_label_clips"] == 12 and summary["splits"] == {"train": 12} and summary["labels"] == 12
    assert eval_summary["clips"] == 8 and eval_summary["splits"] == {"test": 8} and eval_summary["skipped"] == {}
    with train.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    # every label of a clip, ';'-joined, named by the class index (an id it lacks stays an id)
    videos = synth_videos(action_ds)
    for k, row in enumerate(rows):
        assert row["path"].endswith(f"-tr{k:02d}_x_{2500 * (k % 3)}.mp4")  # <YTID>_<start_ms>.mp4
        assert row["label"] == ";".join(display_name(i) for i in audioset_ids(videos[k][1]))
    table = read_manifest(train)
    assert table.multi_label and table.row_labels(0) == ["Ball", "Click"]
    assert "Buzz, loud" in table.labels and "/m/voice" in read_manifest(evals, split="test").labels


def test_a_label_column_with_semicolons_holds_several_labels(tmp_path):
    """The manifest's ``label`` column and an AV dataset's ``index.csv`` both read ``a;b`` as two labels; a manifest
    is multi-label when any row (of any split) has several, and its multi-hot targets drop labels a run lacks."""
    m = write_rows(tmp_path / "m.csv", [
        ["a.mp4", 4, 24, 64, 64, 1, "dog; bark", "train", "", "", ""],
        ["b.mp4", 4, 24, 64, 64, 1, "cat", "train", "", "", ""],
        ["c.mp4", 4, 24, 64, 64, 1, "", "train", "", "", ""],
        ["d.mp4", 4, 24, 64, 64, 1, "cat", "test", "", "", ""],
    ])
    table = read_manifest(m)
    assert table.row_labels(0) == ["dog", "bark"] and table.row_labels(1) == ["cat"] and table.row_labels(2) == []
    assert table.multi_label and read_manifest(m, split="test").multi_label  # the file's, not the split's
    targets = MultiHot(table, ["bark", "cat"])  # "dog" is not among these labels
    assert targets.dropped == 1 and len(targets) == 3
    np.testing.assert_array_equal(np.stack([targets[i] for i in range(3)]), [[1, 0], [0, 1], [0, 0]])
    assert targets[0].dtype == np.float32
    single = write_rows(tmp_path / "s.csv", [["b.mp4", 4, 24, 64, 64, 1, "cat", "train", "", "", ""]])
    assert not read_manifest(single).multi_label

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "index.csv").write_text("video,label\nx.mp4,dog;bark\ny.mp4,cat\n")
    x, y = read_records(tmp_path / "ds")
    assert x.labels == ("dog", "bark") and x.label is None and y.labels == ("cat",) and y.label == "cat"
