"""Training on prepared manifests, streamed: windows decoded on demand in DataLoader workers, the same batches
whatever the number of workers, bad files skipped and counted (and a run stopped past the failure threshold),
silent clips never in-sync positives, resume bit for bit, and ``torchrun --nproc_per_node=2`` on a manifest of
each layout (UCF-101, Kinetics, talking heads)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from layouts import copy, corrupt_random, synth_videos
from procs import run_cli
from procs import torchrun as run_torchrun
from torch.utils.data import DataLoader

from model_store import media
from training.action.train import EpochBatches
from training.avsync.stream import PairSource, PairWindows
from training.data.collection import COLUMNS, read_manifest
from training.data.streaming import (
    DataFailure,
    FailureMeter,
    StreamingWindows,
    StreamOptions,
    frame_start,
    normalize_frames,
    seed_worker,
)
from training.data.synthav import write_video
from training.data.workers import worker_context
from training.models import clip_spec_for
from training.utils import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["threads=1", "progress=false", "log_every=1", "deterministic=true"]
SPEC = clip_spec_for("av_action_tiny")




def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def losses(out: Path) -> list[float]:
    with (out / "metrics.csv").open(newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh) if r.get("loss")]


def write_rows(path: Path, rows: list[list]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        w.writerows(rows)
    return path


# ------------------------------------------------------------------------------------------------ datasets


def test_streamed_items_do_not_depend_on_the_number_of_workers(kinetics_manifest):
    table = read_manifest(kinetics_manifest[0])
    dataset = StreamingWindows(table, SPEC, table.label_index(table.labels), seed=3)
    dataset.epoch = 1

    def batches(workers: int) -> list:
        loader = DataLoader(dataset, batch_sampler=EpochBatches(len(table), 4, seed=3, epoch=1),
                            num_workers=workers, worker_init_fn=seed_worker if workers else None)
        return list(loader)

    one, two = batches(0), batches(2)
    assert len(one) == 2
    for a, b in zip(one, two, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    video, audio, target, rows, failures, lost = one[0]
    assert video.dtype == torch.uint8 and video.shape == (4, SPEC.frames, SPEC.height, SPEC.width, 3)
    assert audio.shape == (4, SPEC.audio_samples) and not failures.any() and not lost.any()
    # each item is its file's window at the start drawn from (seed, epoch, index), cut as a full decode cuts it
    order = EpochBatches(len(table), 4, seed=3, epoch=1)
    i = next(iter(order))[0]
    start = frame_start(np.random.default_rng([3, 1, i]), *table.span(i), SPEC)
    full = media.decode(table.path(i), SPEC)
    f0 = int(round(start * SPEC.fps))
    assert torch.equal(video[0], torch.from_numpy(full.frames[f0:f0 + SPEC.frames]))
    assert int(rows[0]) == i and int(target[0]) == table.label_index(table.labels)[i]


class _Parent(torch.utils.data.Dataset):
    """Each item: the process id of the worker's parent."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        return os.getppid()


def test_loader_workers_come_from_the_fork_server_not_from_the_calling_process():
    """The caller runs a thread (as a rank runs gloo's, or a live loader its feeder) while workers start: they are
    forked from the fork server, a process of its own, so none can inherit a lock that thread holds."""
    stop = threading.Event()
    beside = threading.Thread(target=stop.wait, daemon=True)
    beside.start()
    try:
        parents = {int(p) for p in DataLoader(_Parent(), batch_size=None, num_workers=2,
                                               multiprocessing_context=worker_context())}
    finally:
        stop.set()
    assert len(parents) == 1 and os.getpid() not in parents


def test_normalize_frames_is_normalize_video():
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 6, 5, 3), dtype=np.uint8)
    expected = media.normalize_video(frames, SPEC)
    got = normalize_frames(torch.from_numpy(frames), SPEC)
    assert got.shape == (2, 3, 8, 6, 5) and torch.equal(got, torch.from_numpy(expected))


def test_a_file_broken_after_prepare_is_replaced_and_counted(kinetics_manifest, tmp_path):
    manifest, _ = kinetics_manifest
    with manifest.open(newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    table = read_manifest(manifest, split="train")
    broken = corrupt_random(tmp_path / "broken.mp4")  # listed as fine, then overwritten
    rows = [[str(table.path(0)), *rows[0][1:]], [str(broken), *rows[0][1:]]]
    two = read_manifest(write_rows(tmp_path / "m.csv", rows))
    targets = np.zeros(2, dtype=np.int64)
    video, _, _, row, failures, lost = StreamingWindows(two, SPEC, targets, seed=0)[1]
    assert failures >= 1 and not lost and row == 0 and video.any()  # replaced by the good clip
    *_, failures, lost = StreamingWindows(two, SPEC, targets, options=StreamOptions(retries=0))[1]
    assert failures == 1 and lost


def test_failure_meter_stops_past_the_threshold():
    meter = FailureMeter(StreamOptions(max_failure_rate=0.1, failure_grace=50), lambda d: dict(d))
    assert meter.update(windows=40, failures=8, lost=0) == 8  # 8 of 48: 17 %, but within the grace
    meter.update(windows=40, failures=0, lost=0)  # 8 of 88: 9 %
    with pytest.raises(DataFailure, match=r"10 of 90 windows"):
        meter.update(windows=0, failures=2, lost=0)  # 11 %
    meter = FailureMeter(StreamOptions(max_failure_rate=0.5), lambda d: dict(d))
    with pytest.raises(DataFailure, match="1 found no decodable replacement"):
        meter.update(windows=3, failures=9, lost=1)


def test_clips_without_sound_never_become_in_sync_positives(speech_ds, tmp_path):
    """A clip without an audio stream does not take part; one whose audio is digital silence (an audio stream,
    has_audio=1) is drawn, found silent, and replaced."""
    (src, _), *_ = synth_videos(speech_ds)
    quiet = tmp_path / "quiet.mp4"
    frames = np.full((96, 32, 32, 3), 128, dtype=np.uint8)
    write_video(quiet, frames, 24.0, np.zeros(4 * 16000, dtype=np.float32), 16000)
    good = copy(src, tmp_path / "good.mp4")
    spec = clip_spec_for("avsync_tiny")
    rows = [[str(good), 4, 24, 96, 96, 1, "", "train", "", "", ""],
            [str(quiet), 4, 24, 32, 32, 1, "", "train", "", "", ""],
            [str(quiet), 4, 24, 32, 32, 0, "", "train", "", "", ""]]
    source = PairSource(read_manifest(write_rows(tmp_path / "m.csv", rows)), spec, (0.5, 1.4))
    assert source.rows.tolist() == [0, 1]  # the has_audio=0 row never takes part
    dataset = PairWindows(source, seed=0, options=StreamOptions())
    jobs = source.step_jobs(seed=0, step=0, batch_size=16, flip=False, other=False, mine=list(range(16)))
    assert {j.row for j in jobs} == {0, 1}
    for job in jobs:
        frames, own, shifted, row, failures, silent, lost = dataset[job]
        assert row == 0 and not lost and float(own.abs().max()) > 1e-3 and float(shifted.abs().max()) > 1e-3
        assert (silent > 0) == (job.row == 1)  # the silent clip is replaced (by a redraw, maybe more than once)


# ------------------------------------------------------------------------------------------------ training


def action_args(manifest: Path, val: str = "val") -> list[str]:
    return ["train-action", "model=av_action_tiny", f"data.train={manifest}", f"data.val={manifest}#{val}",
            "optim.epochs=3", "optim.batch_size=4", "stream.workers=1", *COMMON]


def pretrain_args(manifest: Path) -> list[str]:
    return ["pretrain", "model=avsync_tiny", f"data.train={manifest}", f"data.val={manifest}", "optim.steps=6",
            "optim.batch_size=4", "eval_every=3", "stream.workers=1", *COMMON]


@pytest.fixture(scope="module")
def streamed_runs(kinetics_manifest, heads_manifest, tmp_path_factory):
    """One-process streamed runs, start to end: train-action on the Kinetics manifest, pretrain on the talking
    heads."""
    runs = {}
    for name, args in (("action", action_args(kinetics_manifest[0])), ("pretrain", pretrain_args(heads_manifest[0]))):
        out = tmp_path_factory.mktemp(f"stream-{name}")
        code, answer, err = run_cli([*args, f"out={out}"])
        assert code == 0, err[-2000:]
        runs[name] = (out, args, answer)
    return runs


def test_streamed_runs_train_and_report(streamed_runs):
    out, _, answer = streamed_runs["action"]
    assert answer["windows_drawn"] == 24 and answer["windows_skipped"] == 0  # 3 epochs of 8 clips
    assert answer["val_n"] == 4  # the Kinetics val split, every clip scored
    labels = load_checkpoint(out / "best.pt")["labels"]
    assert labels == ["ball click", "ball ring", "bar hum", "bar rasp"]  # the manifest's, sorted
    out, _, answer = streamed_runs["pretrain"]
    assert answer["windows_drawn"] == 24 and answer["val_n"] == 16  # a pair (2 windows) per talking-head clip
    assert len(losses(out)) == 6 and all(np.isfinite(losses(out)))


@pytest.mark.parametrize(("name", "stop"), [("action", 3), ("pretrain", 4)])
def test_streamed_resume_ends_bit_for_bit_where_the_uninterrupted_run_ends(streamed_runs, name, stop, tmp_path):
    full_out, args, full = streamed_runs[name]
    out = tmp_path / "run"
    code, first, _ = run_cli([*args, f"out={out}", f"stop_after={stop}"])
    assert code == 0 and first["stopped"] and first["step"] == stop
    code, again, _ = run_cli([*args, f"out={out}", "resume=auto"])
    assert code == 0
    assert same_weights(weights(out / "last.pt"), weights(full_out / "last.pt"))
    assert same_weights(weights(out / "best.pt"), weights(full_out / "best.pt"))
    assert losses(out) == losses(full_out)
    assert {k: v for k, v in again.items() if "seconds" not in k and k != "checkpoint"} == \
        {k: v for k, v in full.items() if "seconds" not in k and k != "checkpoint"}


def test_bad_files_at_training_time_are_skipped_or_stop_the_run(ucf_manifest, tmp_path):
    """Files that broke after prepare: below the failure threshold the run finishes and counts them; above it, the
    run stops with a message (exit 3), not a traceback."""
    manifest, _ = ucf_manifest
    table = read_manifest(manifest)
    bad = [corrupt_random(tmp_path / f"gone{k}.mp4") for k in range(2)]
    with manifest.open(newline="") as fh:
        rows = [[str(manifest.parent / r[0]), *r[1:]] for r in list(csv.reader(fh))[1:]]  # absolute paths
    label = table.row_labels(0)[0]
    rows += [[str(p), 4, 24, 128, 128, 1, label, "train", "", "", ""] for p in bad]
    m = write_rows(tmp_path / "broken.csv", rows)
    args = ["train-action", "model=av_action_tiny", f"data.train={m}", f"data.val={m}#test", "optim.epochs=1",
            "optim.batch_size=5", "stream.workers=0", *COMMON]
    code, answer, _ = run_cli([*args, f"out={tmp_path / 'ok'}", "stream.max_failure_rate=0.5"])
    assert code == 0 and answer["windows_skipped"] >= 2  # each bad row's window, replaced by another clip's
    assert answer["windows_drawn"] == 10 + answer["windows_skipped"]
    code, answer, err = run_cli([*args, f"out={tmp_path / 'stop'}", "stream.max_failure_rate=0.01",
                                 "stream.failure_grace=0"])
    assert code == 3 and answer is None and "failed to decode" in err


# ------------------------------------------------------------------------------------------------ torchrun

DDP_TOLERANCE = 0.15  # as tests/training/test_engine.py: BatchNorm statistics per rank on CPU


def torchrun(args: list[str], out: Path) -> subprocess.CompletedProcess:
    return run_torchrun(args, out)


@pytest.mark.parametrize("layout", ["ucf101", "kinetics", "talking_heads"])
def test_torchrun_two_processes_on_each_layout(layout, ucf_manifest, kinetics_manifest, heads_manifest,
                                               streamed_runs, tmp_path):
    """Prepared from real files with bad ones mixed in (the report names them), each layout trains a tiny model
    under torchrun with 2 processes; where a 1-process run of the same config exists, the loss curve follows it."""
    manifest, summary = {"ucf101": ucf_manifest, "kinetics": kinetics_manifest, "talking_heads": heads_manifest}[layout]
    assert summary["layout"] == layout and summary["skipped"]  # bad files were there, and reported
    args = {"ucf101": action_args(manifest, "test"), "kinetics": action_args(manifest),
            "talking_heads": pretrain_args(manifest)}[layout]
    out = tmp_path / "ddp"
    proc = torchrun(args, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == 1 and answers[0]["windows_skipped"] == 0
    last = load_checkpoint(out / "last.pt")
    assert last["world_size"] == 2 and last["finished"] and len(last["rng"]) == 2
    two = losses(out)
    assert len(two) == 6 and all(np.isfinite(two))
    one_run = {"kinetics": "action", "talking_heads": "pretrain"}.get(layout)
    if one_run is not None:
        one = losses(streamed_runs[one_run][0])
        rel = [abs(a - b) / max(abs(a), 1e-3) for a, b in zip(one, two, strict=True)]
        assert max(rel[:4]) < DDP_TOLERANCE, (one, two)
