"""The noisy-label methods streamed from a prepared manifest (``train-action --method ... data.train=MANIFEST``): the
streamed source cuts the windows the in-RAM ArraySet cuts (with correspondence noise too), every method trains a few
steps on a UCF-101 manifest with a file broken after prepare and a clip without sound mixed in (the broken file
replaced and counted), NTL resumes bit for bit and runs under torchrun with 2 processes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from procs import metric_rows, run_cli

from training.action.noisy.arrays import load_array_set, window_batch
from training.action.noisy.methods import NTLConfig, _pair_weights, embed
from training.action.noisy.stream import NoisyWindows, StreamedClips
from training.data.collection import COLUMNS, read_manifest
from training.data.noise import make_noise
from training.data.prepare import prepare
from training.data.streaming import frame_start
from training.data.synthav import ACTION_CLASSES
from training.engine import Run
from training.models import clip_spec_for, create_model
from training.utils import load_checkpoint

SPEC = clip_spec_for("av_action_tiny")
COMMON = ["threads=1", "progress=false", "log_every=1", "deterministic=true", "stream.workers=0"]






def losses(out: Path) -> list[float]:
    return [float(r["loss"]) for r in metric_rows(out) if r.get("loss")]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ streamed = in RAM


@pytest.fixture(scope="module")
def both(action_ds, tmp_path_factory):
    """The 16 SynthAV clips twice: decoded into an ArraySet, and prepared into a manifest that is streamed; each
    with the same label and correspondence noise."""
    manifest = tmp_path_factory.mktemp("noisy-av") / "av.csv"
    prepare(action_ds, manifest, workers=1, progress=False)
    table = read_manifest(manifest)
    arrays = load_array_set(str(action_ds), SPEC, list(ACTION_CLASSES), array_cache=None, workers=1)
    with (action_ds / "index.csv").open(newline="") as fh:
        order = [str(action_ds / r["video"]) for r in csv.DictReader(fh)]
    assert [str(table.path(i)) for i in range(len(table))] == order  # the same clips in the same rows
    streamed = StreamedClips(table, SPEC, table.label_index(ACTION_CLASSES), seed=3)
    np.testing.assert_array_equal(streamed.labels, arrays.labels)
    noise = make_noise(arrays.labels, 8, 0.25, "sym", 0.5, seed=0)
    assert len(noise.corr_noisy) == 8
    return arrays.with_noise(noise.labels, noise.audio_source), streamed.with_noise(noise.labels, noise.audio_source)


def test_streamed_windows_equal_the_in_ram_windows(both):
    """Clip i's frames and the audio it carries (another clip's, for the 8 planted pairs) at a given start: the
    streamed decode of the window equals the in-RAM cut, byte for byte."""
    arrays, streamed = both
    windows = NoisyWindows(streamed.table, SPEC, streamed.labels, streamed.audio_source)
    for i, f0 in [(0, 0), (3, 5), (7, 9), (12, 2), (15, 16)]:
        video, audio, sound = windows.pair(i, f0 / SPEC.fps)
        assert sound
        np.testing.assert_array_equal(video, arrays.frames[i, f0:f0 + SPEC.frames])
        a0 = round(f0 / SPEC.fps * SPEC.sample_rate)
        np.testing.assert_array_equal(audio, arrays.audio[i, a0:a0 + SPEC.audio_samples])


def test_a_streamed_batch_and_pass_equal_the_in_ram_ones(both):
    """Through the ClipSource interface: a training batch (starts from [seed, epoch, i]) equals ArraySet's batch at
    the same starts; the whole-set pass and the embeddings NTL estimates from are the same."""
    arrays, streamed = both
    run = Run.local()
    idx = np.array([5, 0, 13, 8])
    streamed.start_epoch(2, [idx], 0, run)
    part = streamed.batch(idx, np.random.default_rng(0), run)
    streamed.end_epoch()
    np.testing.assert_array_equal(part.idx, idx)
    np.testing.assert_array_equal(part.rows, idx)
    assert part.logs == {"skipped": 0.0} and not part.silent.any()
    starts = np.array([round(frame_start(np.random.default_rng([3, 2, int(i)]), *streamed.table.span(int(i)), SPEC)
                             * SPEC.fps) for i in idx])
    video, audio = window_batch(arrays, idx, starts)
    torch.testing.assert_close(part.video, video, rtol=0, atol=1e-6)  # the same bytes, normalised on the device
    assert torch.equal(part.audio, audio)
    got = list(streamed.middle_windows(run, 6))
    want = list(arrays.middle_windows(run, 6))
    assert [g[0].tolist() for g in got] == [w[0].tolist() for w in want]
    for (_, gv, ga), (_, wv, wa) in zip(got, want, strict=True):
        torch.testing.assert_close(gv, wv, rtol=0, atol=1e-6)
        assert torch.equal(ga, wa)
    torch.manual_seed(0)
    model = create_model("av_action_tiny", num_classes=8)
    es, ea = embed(model, streamed), embed(model, arrays)
    for k in ("v", "a", "h", "logits"):
        torch.testing.assert_close(es[k], ea[k], rtol=1e-4, atol=1e-5)
    assert streamed.meter.windows == 4 + 16 + 16 and streamed.meter.failures == 0


def test_a_pair_without_sound_never_corresponds():
    losses_ = torch.tensor([0.1, 0.2, 5.0, 0.15, 4.0, 0.3], dtype=torch.float64)
    audible = np.array([True, False, True, True, True, True])
    w = _pair_weights(losses_, audible, NTLConfig())
    assert w[1] == 0 and w[0] > 0.5 and w[2] < 0.5


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def noisy_manifest(ucf_manifest, tmp_path_factory):
    """The UCF-101 manifest's clips (8 train, 4 test), plus two training rows: a file that broke after prepare
    (random bytes) and a real clip without an audio track (``has_audio=0``, as ``prepare --allow-silent`` keeps it)."""
    from layouts import corrupt_random, silent

    manifest, _ = ucf_manifest
    root = tmp_path_factory.mktemp("noisy-ucf")
    table = read_manifest(manifest)
    with manifest.open(newline="") as fh:
        rows = [[str(manifest.parent / r[0]), *r[1:]] for r in list(csv.reader(fh))[1:]]  # absolute paths
    broken = corrupt_random(root / "broken.mp4")
    quiet = silent(table.path(0), root / "quiet.mp4")
    label = table.row_labels(0)[0]
    rows += [[str(broken), 4, 24, 128, 128, 1, label, "train", "", "", ""],
             [str(quiet), 4, 24, 128, 128, 0, label, "train", "", "", ""]]
    path = root / "noisy.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        w.writerows(rows)
    return path


def method_args(method: str, manifest: Path) -> list[str]:
    return ["train-action", "--method", method, "model=av_action_tiny", f"data.train={manifest}",
            f"data.val={manifest}#test", "labels=[]", "optim.epochs=4", "optim.batch_size=4", "ntl.phase1_frac=0.5",
            "ntl.warmup=1", "ntl.knn_k=3", "ntl.correct_from=0.2", "ntl.refresh=1", "noise.label_noise=0.2",
            "noise.corr_noise=0.5", "stream.max_failure_rate=0.5", *COMMON]


def test_a_silent_clip_is_marked_and_never_audible(noisy_manifest):
    table = read_manifest(noisy_manifest)
    streamed = StreamedClips(table, SPEC, np.zeros(len(table), dtype=np.int64))
    assert streamed.audible.tolist() == [True] * 9 + [False]
    source = np.arange(10)
    source[0] = 9
    windows = NoisyWindows(table, SPEC, streamed.labels, source)
    _, audio, *_, lost, silent = windows[0]  # clip 0 carries the silent clip's audio
    assert silent and not lost and float(audio.abs().max()) == 0.0


@pytest.fixture(scope="module")
def streamed_ntl(noisy_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("stream-ntl")
    args = method_args("ntl", noisy_manifest)
    code, answer, err = run_cli([*args, f"out={out}"])
    assert code == 0, err[-3000:]
    return out, args, answer


@pytest.mark.parametrize("method", ["ce", "gce", "sce", "coteaching", "ntl"])
def test_each_method_trains_streamed_from_a_manifest(method, noisy_manifest, streamed_ntl, tmp_path):
    if method == "ntl":
        out, _, answer = streamed_ntl
    else:
        out = tmp_path / "run"
        code, answer, err = run_cli([*method_args(method, noisy_manifest), f"out={out}"])
        assert code == 0, err[-3000:]
    steps = 4 * (10 // 4)  # 4 epochs of 2 batches of 4
    assert answer["method"] == method and 0.0 <= answer["val_noisy_accuracy"] <= 1.0
    assert answer["noise"]["label_noisy"] == 2 and answer["noise"]["corr_noisy"] == 5  # of 10
    rows = [r for r in metric_rows(out) if r.get("loss")]
    assert len(rows) == steps and all(np.isfinite(float(r["loss"])) for r in rows)
    replaced = sum(float(r["skipped"]) for r in rows)  # training windows of the broken file, replaced
    assert replaced >= 1
    # NTL's whole-set passes (phase-1 epochs, the phase-1 diagnostic, phase-2 epochs) embed every clip: those whose
    # frames or (planted) audio come from the broken file from zeros, counted
    passes = {"ntl": 2 + 1 + 2}.get(method, 0)
    table = read_manifest(noisy_manifest)
    noise = make_noise(table.label_index(list(ACTION_CLASSES)), 8, 0.2, "sym", 0.5, seed=0)
    broken = [table.path(i).name for i in range(len(table))].index("broken.mp4")
    failing = int(((np.arange(10) == broken) | (noise.audio_source == broken)).sum())
    assert answer["windows_skipped"] == replaced + passes * failing
    assert answer["windows_drawn"] == 4 * steps + replaced + 10 * passes
    ckpt = load_checkpoint(out / "best.pt")
    # labels=[]: the manifest's, as train-action takes them (all SynthAV classes: SynthAV's eight, in their order)
    assert set(read_manifest(noisy_manifest).labels) < set(ckpt["labels"]) and ckpt["labels"] == list(ACTION_CLASSES)


@pytest.mark.parametrize(("stop", "workers"), [(3, 0), (4, 0), (5, 1)])
def test_streamed_ntl_resume_ends_bit_for_bit(streamed_ntl, stop, workers, tmp_path):
    """Stopped inside phase 1 (step 3), at the phase boundary (4) and inside phase 2 (5; this run decodes in a worker
    process, the uninterrupted one in the training process), then resumed: the weights, the answer (failure counts
    included) and the loss curve of the uninterrupted run."""
    full_out, args, full = streamed_ntl
    args = [*args, f"stream.workers={workers}"]
    out = tmp_path / "run"
    code, first, _ = run_cli([*args, f"out={out}", f"stop_after={stop}"])
    assert code == 0 and first["stopped"] and first["step"] == stop
    code, again, err = run_cli([*args, f"out={out}", "resume=auto"])
    assert code == 0, err[-3000:]
    assert same_weights(weights(out / "last.pt"), weights(full_out / "last.pt"))
    assert same_weights(weights(out / "best.pt"), weights(full_out / "best.pt"))
    assert losses(out) == losses(full_out)
    assert {k: v for k, v in again.items() if "seconds" not in k and k != "checkpoint"} == \
        {k: v for k, v in full.items() if "seconds" not in k and k != "checkpoint"}


DDP_TOLERANCE = 0.15  # as tests/training/test_engine.py: BatchNorm statistics per rank on CPU


def test_streamed_ntl_under_torchrun(streamed_ntl, run_torchrun, tmp_path):
    """Two processes: each decodes its half of every batch and of NTL's whole-set passes (rank 0 gathers the
    embeddings); one answer, the failures counted over both ranks, the loss curve of one process."""
    one_out, args, one = streamed_ntl
    out = tmp_path / "ddp"
    proc = run_torchrun(args, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == 1
    answer = answers[0]
    assert answer["windows_skipped"] >= 1 and answer["windows_drawn"] == one["windows_drawn"]
    last = load_checkpoint(out / "last.pt")
    assert last["world_size"] == 2 and last["finished"]
    a, b = losses(one_out), losses(out)
    assert len(a) == len(b)
    rel = [abs(x - y) / max(abs(x), 1e-3) for x, y in zip(a, b, strict=True)]
    assert max(rel[:4]) < DDP_TOLERANCE, (a, b)
