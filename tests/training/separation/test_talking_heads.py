"""Separation from a real talking-head collection (mix-and-separate), streamed: ``prepare`` a
``<speaker>/<video>/<clip>.mp4`` folder, list beside its clips a file without audio, one whose audio is digital
silence and one that broke after ``prepare``, then train on the manifest, in one process and under torchrun with two.
Each mixture's windows are decoded on their own (:mod:`training.separation.stream`): cut as a full decode cuts them,
the same whatever the number of workers, silent clips never voices, bad files replaced and counted, resume exact."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from layouts import corrupt_random, silent, synth_videos
from procs import metric_rows, run_cli

from model_store import media
from training.data.collection import COLUMNS, read_manifest
from training.data.streaming import StreamOptions, frame_start
from training.data.synthav import write_video
from training.models import clip_spec_for
from training.separation.mixing import AugConfig, MixConfig, mix_voices
from training.separation.stream import MixWindows, StepMixes, Voices, mix_loader
from training.separation.train import streamed_manifest
from training.utils import load_checkpoint

CLIP = clip_spec_for("separation_tiny_assign", 0.75, stft=True)
DDP_TOLERANCE = 0.15  # as tests/training/test_engine.py: BatchNorm statistics per rank on CPU


def _args(manifest: Path, cache: Path) -> list[str]:
    return ["train-separation", "model=separation_tiny_assign", f"data.train={manifest}", f"data.val={manifest}",
            f"data.cache_dir={cache}", "stream.workers=1", "data.val_windows=8", "optim.steps=4",
            "optim.batch_size=4", "optim.eval_every=2", "progress=false", "threads=1", "log_every=1",
            "deterministic=true", "loss.sync=1.0"]




def _rows(out: Path) -> list[dict[str, str]]:
    return [r for r in metric_rows(out) if r.get("loss")]


def _losses(out: Path) -> list[float]:
    return [float(r["loss"]) for r in _rows(out)]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def heads_with_bad(heads_manifest, speech_ds, tmp_path_factory):
    """The prepared talking heads plus, as three more speakers: a clip without an audio stream (``has_audio=0``), one
    whose audio stream is digital silence, and one listed as fine that no longer decodes. Returns the manifest and
    those three rows."""
    manifest, summary = heads_manifest
    assert summary["layout"] == "talking_heads" and summary["skipped"]  # prepare's own bad files, reported
    root = tmp_path_factory.mktemp("heads-bad")
    with manifest.open(newline="") as fh:
        rows = [[str(manifest.parent / r[0]), *r[1:]] for r in list(csv.reader(fh))[1:]]  # absolute paths
    (src, _), *_ = synth_videos(speech_ds)
    nosound = silent(src, root / "id00007" / "vid00" / "00001.mp4")
    quiet = root / "id00008" / "vid00" / "00001.mp4"
    quiet.parent.mkdir(parents=True)
    write_video(quiet, np.full((96, 32, 32, 3), 128, dtype=np.uint8), 24.0, np.zeros(4 * 16000, np.float32), 16000)
    broken = corrupt_random(root / "id00009" / "vid00" / "00001.mp4")
    n = len(rows)
    rows += [[str(nosound), 4, 24, 96, 96, 0, "", "", "id00007", "", ""],
             [str(quiet), 4, 24, 32, 32, 1, "", "", "id00008", "", ""],
             [str(broken), 4, 24, 96, 96, 1, "", "", "id00009", "", ""]]
    path = root / "heads.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        w.writerows(rows)
    return path, {"nosound": n, "quiet": n + 1, "broken": n + 2}


# ------------------------------------------------------------------------------------------------ items


def test_a_streamed_mixture_is_its_two_windows_cut_from_full_decodes(heads_manifest):
    table = read_manifest(heads_manifest[0])
    voices = Voices(table)
    mix, aug = MixConfig(), AugConfig()
    frames, mixture, refs, on_row, off_row, failures, quiet, lost = MixWindows(voices, CLIP, mix, aug, seed=3)[(2, 1)]
    assert not lost and failures == 0 and quiet == 0
    # everything about the item comes from [seed, step, k]
    rng = np.random.default_rng([3, 2, 1])
    assert voices.draw(rng) == (on_row, off_row)
    assert table.speakers[table.speaker_ids[on_row]] != table.speakers[table.speaker_ids[off_row]]
    on_s, off_s = frame_start(rng, *table.span(on_row), CLIP), frame_start(rng, *table.span(off_row), CLIP)
    level, gain = rng.uniform(*mix.level_db), rng.uniform(*mix.gain)
    on_frames, on_audio = media.cut_window(media.decode(table.path(on_row), CLIP), CLIP, on_s)
    _, off_audio = media.cut_window(media.decode(table.path(off_row), CLIP), CLIP, off_s)
    assert frames.dtype == torch.uint8 and frames.shape == (CLIP.frames, CLIP.height, CLIP.width, 3)
    assert torch.equal(frames, torch.from_numpy(on_frames))
    want_mix, want_refs = mix_voices(on_audio, off_audio, level, gain, aug, CLIP.sample_rate)
    assert np.array_equal(mixture.numpy(), want_mix) and np.array_equal(refs.numpy(), want_refs)
    assert float(refs[0].abs().max()) > 1e-3 and float(refs[1].abs().max()) > 1e-3


def test_mixtures_from_the_decoded_cache_are_the_decoded_ones(heads_layout, tmp_path):
    """``prepare --cache`` at the separation model's clip spec: the items are cut from the cache, the same."""
    from training.data.prepare import prepare
    from training.data.streaming import find_cache

    manifest = tmp_path / "heads.csv"
    prepare(heads_layout[0], manifest, workers=1, progress=False, cache=[CLIP])
    voices = Voices(read_manifest(manifest))
    cache = find_cache(voices.table, CLIP)
    assert cache is not None and len(cache) == len(voices.table)
    with_cache = MixWindows(voices, CLIP, MixConfig(), AugConfig(noise=0.5), seed=2, cache=cache)
    without = MixWindows(voices, CLIP, MixConfig(), AugConfig(noise=0.5), seed=2)
    for item in [(0, 0), (0, 1), (3, 2)]:
        assert all(torch.equal(torch.as_tensor(a), torch.as_tensor(b))
                   for a, b in zip(with_cache[item], without[item], strict=True))


def test_streamed_batches_do_not_depend_on_the_number_of_workers(heads_with_bad):
    voices = Voices(read_manifest(heads_with_bad[0]))
    dataset = MixWindows(voices, CLIP, MixConfig(), AugConfig(reverb=0.5, noise=0.5, band=0.5), seed=5)

    def batches(workers: int) -> list:
        return list(mix_loader(dataset, StepMixes(1, 3, [0, 1, 2, 3]), StreamOptions(workers=workers), False, 0))

    one, two = batches(0), batches(2)
    assert len(one) == 2
    # the workers come from the fork server (training.data.workers), not from a fork of this process
    loader = mix_loader(dataset, StepMixes(1, 3, [0]), StreamOptions(workers=2), False, 0)
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    for a, b in zip(one, two, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # a rank's share (positions 2, 3 of each global batch) is exactly those items
    share = list(mix_loader(dataset, StepMixes(1, 3, [2, 3]), StreamOptions(workers=0), False, 0))
    for a, b in zip(one, share, strict=True):
        assert all(torch.equal(x[2:], y) for x, y in zip(a, b, strict=True))


def test_clips_without_a_voice_never_take_part_and_broken_files_are_replaced(heads_with_bad):
    manifest, bad = heads_with_bad
    voices = Voices(read_manifest(manifest))
    assert bad["nosound"] not in voices.rows.tolist() and len(voices) == 10  # has_audio=0: never drawn
    dataset = MixWindows(voices, CLIP, MixConfig(), AugConfig(), seed=0)
    items = [dataset[(step, k)] for step in range(10) for k in range(4)]
    used = {int(r) for item in items for r in item[3:5]}
    assert used.isdisjoint(bad.values())  # neither the silent nor the broken clip is ever a voice
    assert sum(int(it[5]) for it in items) > 0 and sum(int(it[6]) for it in items) > 0  # each drawn, replaced
    assert not any(it[7] for it in items)
    drawn_broken = next((s, k) for s in range(10) for k in range(4)
                        if bad["broken"] in voices.draw(np.random.default_rng([0, s, k])))
    *_, failures, quiet, lost = MixWindows(voices, CLIP, MixConfig(), AugConfig(), seed=0,
                                           options=StreamOptions(retries=0))[drawn_broken]
    assert failures == 1 and quiet == 0 and lost  # no retry left: lost (which stops a run)


def test_a_manifest_streams_alone_and_synthav_sets_stay_in_ram(heads_manifest):
    synth = "synthav:seed=1,n=4,kind=speech"
    assert streamed_manifest(synth) is None and streamed_manifest([synth, synth]) is None
    manifest = str(heads_manifest[0])
    assert streamed_manifest(manifest) == streamed_manifest([manifest]) == manifest
    with pytest.raises(ValueError, match="a manifest is streamed and trains alone"):
        streamed_manifest([manifest, synth])


# ------------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def streamed_run(heads_with_bad, tmp_path_factory):
    """A one-process streamed run on the talking heads with bad files, start to end."""
    out = tmp_path_factory.mktemp("heads-run")
    args = _args(heads_with_bad[0], out.parent / "heads-npz")
    code, answer, err = run_cli([*args, f"out={out}"])
    assert code == 0, err[-3000:]
    return out, args, answer


def test_streamed_talking_heads_train_and_count_what_they_skip(streamed_run):
    out, _, answer = streamed_run
    assert np.isfinite(answer["val_si_sdri_on"]) and np.isfinite(answer["val_si_sdri_off"])
    assert answer["windows_drawn"] == 16 + answer["windows_skipped"] and answer["windows_skipped"] > 0
    rows = _rows(out)
    assert len(rows) == 4 and np.isfinite(_losses(out)).all()
    assert sum(float(r["skipped"]) for r in rows) == answer["windows_skipped"]
    assert not (out.parent / "heads-npz").exists()  # nothing decoded into RAM and cached as .npz


def test_streamed_resume_ends_bit_for_bit_where_the_uninterrupted_run_ends(streamed_run, tmp_path):
    full_out, args, full = streamed_run
    out = tmp_path / "run"
    code, first, _ = run_cli([*args, f"out={out}", "stop_after=3"])
    assert code == 0 and first["stopped"] and first["step"] == 3
    code, again, _ = run_cli([*args, f"out={out}", "resume=auto"])
    assert code == 0
    assert _same(_weights(out / "last.pt"), _weights(full_out / "last.pt"))
    assert _same(_weights(out / "best.pt"), _weights(full_out / "best.pt"))
    assert _losses(out) == _losses(full_out)
    assert {k: v for k, v in again.items() if "seconds" not in k and k != "checkpoint"} == \
        {k: v for k, v in full.items() if "seconds" not in k and k != "checkpoint"}


def test_streamed_talking_heads_under_torchrun_follow_one_process(streamed_run, heads_with_bad, run_torchrun,
                                                                   tmp_path):
    one, args, answer = streamed_run
    two = tmp_path / "two"
    proc = run_torchrun(args, two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == 1  # rank 0 answers, with the failures of both ranks
    assert answers[0]["windows_skipped"] == answer["windows_skipped"]
    last = load_checkpoint(two / "last.pt")
    assert last["world_size"] == 2 and last["finished"]
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 4 and np.isfinite(b).all()
    rel = [abs(x - y) / max(abs(x), 1e-3) for x, y in zip(a, b, strict=True)]
    assert max(rel) < DDP_TOLERANCE, (a, b)  # the same global batches, split over two ranks (BatchNorm per rank)


def test_too_many_broken_files_stop_the_run_with_a_message(heads_with_bad, tmp_path):
    args = _args(heads_with_bad[0], tmp_path / "npz")
    code, answer, err = run_cli([*args, f"out={tmp_path / 'stop'}", "stream.max_failure_rate=0.01",
                              "stream.failure_grace=0", "stream.workers=0"])
    assert code == 3 and answer is None and "failed to decode" in err
