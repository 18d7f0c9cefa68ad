import csv
import shutil

import numpy as np
import pytest

from model_store.manifest import ClipSpec
from training.data.datasets import (
    WindowDataset,
    load_clips,
    parse_synth_spec,
    read_records,
    resolve_data,
)
from training.data.synthav import ACTION_CLASSES

SPEC = ClipSpec(fps=8, frames=8, height=32, width=32, sample_rate=16000, audio_samples=16000)


def test_index_csv_records(action_ds):
    records = read_records(action_ds)
    assert len(records) == 16
    assert [r.label for r in records[:8]] == list(ACTION_CLASSES)
    r = records[0]
    assert r.video.is_file() and r.on_screen.is_file() and r.off_screen.is_file()
    assert r.start_s == 0 and r.end_s == 4.0
    assert len(r.boxes) == 96 and len(r.boxes[0]) == 5


def test_kinetics_csv_and_ucf_tree(action_ds, tmp_path):
    records = read_records(action_ds)[:3]
    kin = tmp_path / "kinetics.csv"
    with kin.open("w", newline="") as fh:
        w = csv.writer(fh)
        for r in records:
            w.writerow([str(r.video), r.label, 1.0, 3.0])
    got = read_records(kin)
    assert [(g.video, g.label, g.start_s, g.end_s) for g in got] == [(r.video, r.label, 1.0, 3.0) for r in records]

    tree = tmp_path / "ucf"
    for r in records:
        (tree / r.label).mkdir(parents=True)
        shutil.copy(r.video, tree / r.label / r.video.name)
    got = read_records(tree)
    assert sorted(g.label for g in got) == sorted(r.label for r in records)


def test_empty_dir_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index.csv"):
        read_records(tmp_path)


def test_synth_spec_parsing():
    assert parse_synth_spec("synthav:seed=3,n=10") == {"kind": "actions", "seed": 3, "n": 10}
    assert parse_synth_spec("/some/dir") is None
    with pytest.raises(ValueError, match="unknown key"):
        parse_synth_spec("synthav:seed=3,n=10,bogus=1")
    with pytest.raises(ValueError, match="needs seed"):
        parse_synth_spec("synthav:n=10")


def test_resolve_data_renders_once(tmp_path):
    first = resolve_data("synthav:seed=5,n=2", tmp_path)
    assert (first / "index.csv").is_file() and len(read_records(first)) == 2
    stamp = (first / "index.csv").stat().st_mtime_ns
    assert resolve_data("synthav:seed=5,n=2", tmp_path) == first
    assert (first / "index.csv").stat().st_mtime_ns == stamp


def test_clips_and_windows(action_ds):
    records = read_records(action_ds)[:4]
    clips = load_clips(records, SPEC, ACTION_CLASSES, workers=1)
    assert [c.label for c in clips] == [0, 1, 2, 3]
    assert clips[0].frames.shape == (32, 32, 32, 3) and clips[0].audio.shape == (64000,)
    train = WindowDataset(clips, SPEC, train=True, seed=0)
    video, audio, label, ci = train[1]
    assert video.shape == (3, 8, 32, 32) and audio.shape == (16000,) and label == 1 and ci == 1
    val = WindowDataset(clips, SPEC, train=False)
    assert len(val) == 4 * 4  # 4 s clips, 1 s windows, hop = window
    # evaluation windows are exactly the service's windows
    from model_store.media import load_windows, normalize_video

    served = load_windows(records[0].video, SPEC)
    np.testing.assert_array_equal(val[2][0].numpy(), normalize_video(served.video[2], SPEC))
    np.testing.assert_array_equal(val[2][1].numpy(), served.audio[2])


def test_kinetics_span_is_cut(action_ds, tmp_path):
    r = read_records(action_ds)[0]
    r.start_s, r.end_s = 1.0, 2.5
    (clip,) = load_clips([r], SPEC, ACTION_CLASSES, workers=1)
    assert clip.duration_s == pytest.approx(1.5)
    assert len(clip.frames) == 12 and len(clip.audio) == 24000


def test_unknown_label_rejected(action_ds):
    r = read_records(action_ds)[0]
    r.label = "juggling"
    with pytest.raises(ValueError, match="juggling"):
        load_clips([r], SPEC, ACTION_CLASSES, workers=1)


def test_header_less_csv_whose_first_path_contains_video(action_ds, tmp_path):
    """A ``path,label`` CSV without a header is read as rows even when its first path contains "video" (it was
    taken for a header, and its first clip lost)."""
    records = read_records(action_ds)[:2]
    folder = tmp_path / "video_clips"
    folder.mkdir()
    for r in records:
        shutil.copy(r.video, folder / f"video_{r.video.name}")
    csv_path = tmp_path / "list.csv"
    with csv_path.open("w", newline="") as fh:
        csv.writer(fh).writerows([[f"video_clips/video_{r.video.name}", r.label] for r in records])
    got = read_records(csv_path)
    assert [(g.video, g.label) for g in got] == [(folder / f"video_{r.video.name}", r.label) for r in records]
    # a real header still is one (and its split column is kept)
    with csv_path.open("w", newline="") as fh:
        csv.writer(fh).writerows([["video", "label", "split"], *[[f"video_clips/video_{r.video.name}", r.label,
                                                                  "train"] for r in records]])
    got = read_records(csv_path)
    assert len(got) == 2 and got[0].label == records[0].label and got[0].split == "train"
