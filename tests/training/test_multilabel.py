"""Multi-label AudioSet-style data: ``prepare`` reads AudioSet's segments CSV (and class index) from real mp4 files
with bad ones mixed in; ``train-action`` on the multi-label manifest trains per-class sigmoids under torchrun with 2
processes and reports mAP; the published model says ``multi_label`` and is served and scored with sigmoids."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from layouts import audioset_ids, build_audioset, synth_videos
from test_prepare import run_prepare, skipped
from test_streaming import COMMON, losses, run_cli, same_weights, torchrun, weights, write_rows

from model_store.media import load_windows
from model_store.pipelines import run_windows
from model_store.pipelines.action import action_feeds, read_actions, sigmoid
from model_store.registry import ModelStore
from model_store.runtime import load_model
from training.cli import main
from training.data.collection import MultiHot, read_manifest
from training.data.datasets import read_records
from training.data.prepare import detect_layout
from training.utils import load_checkpoint


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


def test_train_action_refuses_a_multi_label_manifest_with_multi_label_false(audioset, tmp_path):
    train, evals, *_ = audioset
    code, answer, err = run_cli(["train-action", "model=av_action_tiny", f"data.train={train}", f"data.val={evals}",
                                 "multi_label=false", f"out={tmp_path}", *COMMON])
    assert code == 3 and answer is None and "multi-label" in err


def test_multi_label_resume_ends_bit_for_bit_where_the_uninterrupted_run_ends(audioset, tmp_path):
    train, evals, *_ = audioset
    args = ["train-action", "model=av_action_tiny", f"data.train={train}", f"data.val={evals}", "optim.epochs=2",
            "optim.batch_size=4", "stream.workers=0", *COMMON]
    code, full, err = run_cli([*args, f"out={tmp_path / 'full'}"])
    assert code == 0, err[-2000:]
    code, first, _ = run_cli([*args, f"out={tmp_path / 'cut'}", "stop_after=4"])  # inside the second epoch
    assert code == 0 and first["stopped"]
    code, again, _ = run_cli([*args, f"out={tmp_path / 'cut'}", "resume=auto"])
    assert code == 0
    for name in ("last.pt", "best.pt"):
        assert same_weights(weights(tmp_path / "cut" / name), weights(tmp_path / "full" / name))
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    assert again["val_mAP"] == full["val_mAP"] and again["epoch"] == full["epoch"]


def test_multi_label_torchrun_train_export_evaluate_serve(audioset, tmp_path, capsys):
    train, evals, *_ = audioset
    out = tmp_path / "run"
    args = ["train-action", "model=av_action_tiny", f"data.train={train}", f"data.val={evals}", "optim.epochs=2",
            "optim.batch_size=4", "optim.lr=0.01", "stream.workers=0", "modality_dropout=0", *COMMON]
    proc = torchrun(args, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (answer,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert 0.0 <= answer["val_mAP"] <= 1.0 and answer["val_n"] == 8 and "val_accuracy" not in answer
    assert answer["val_map_classes"] == 12  # every label of the eval clips has a positive there
    best = load_checkpoint(out / "best.pt")
    assert best["multi_label"] and best["world_size"] == 2 and len(best["labels"]) == 12
    assert best["metrics"]["val_mAP"] == answer["val_mAP"]
    assert len(losses(out)) == 6 and all(np.isfinite(losses(out)))
    with (out / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["val_mAP"] for r in rows if r.get("val_mAP")] and all(r.get("precision_at_1") for r in rows
                                                                     if r.get("loss"))

    store = tmp_path / "store"
    assert main(["export", "--checkpoint", str(out / "best.pt"), "--root", str(store), "--eval-data",
                 str(evals)]) == 0
    manifest = ModelStore(store).manifest("action")
    assert manifest.multi_label and manifest.labels == best["labels"]
    assert set(manifest.metrics) == {"mAP", "mAP_audio_only", "mAP_video_only"}
    assert all(0.0 <= v <= 1.0 for v in manifest.metrics.values())

    capsys.readouterr()
    assert main(["evaluate", "action", "--data", str(evals), "--root", str(store), "--json", "-", "-q"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 8 and result["map_classes"] == 12 and "accuracy" not in result
    assert 0.0 <= result["mAP"] <= 1.0 and result["mAP"] == pytest.approx(manifest.metrics["mAP"])

    # the pipeline the service and the scorer share reads the published model's logits as per-class sigmoids
    model = load_model(ModelStore(store), "action")
    windows = load_windows(read_manifest(evals, split="test").path(0), manifest.clip)
    feeds = lambda w: action_feeds(w, manifest.clip, {s.name for s in manifest.inputs})  # noqa: E731
    (outputs,) = run_windows(model.run, feeds, [windows])
    actions = read_actions(outputs["logits"], windows, manifest.clip, multi_label=manifest.multi_label)
    np.testing.assert_allclose(actions.window_probs, sigmoid(outputs["logits"]))
    assert not np.allclose(actions.window_probs.sum(axis=1), 1.0)  # not a softmax
    np.testing.assert_allclose(actions.probs, actions.window_probs.mean(axis=0))
