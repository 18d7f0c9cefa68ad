"""The decoded cache (``prepare --cache MODEL``): every usable clip decoded once into sharded memory-mapped arrays
beside the manifest, read by the same streaming datasets, which then cut the very windows they would have decoded."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from procs import run_cli as cli

from model_store import media
from training.avsync.stream import PairSource, PairWindows
from training.data.cache import CacheWriter, DecodedCache, cache_dir
from training.data.collection import read_manifest
from training.data.prepare import prepare
from training.data.streaming import ClipWindows, StreamingWindows, StreamOptions, find_cache
from training.models import clip_spec_for
from training.utils import load_checkpoint

SPEC = clip_spec_for("av_action_tiny")  # avsync_tiny decodes at the same fps, size and rate


@pytest.fixture(scope="module")
def cached(kinetics_layout, tmp_path_factory):
    """The Kinetics layout, copied, prepared with a cache next to its manifest."""
    source, _ = kinetics_layout
    root = shutil.copytree(source.parent, tmp_path_factory.mktemp("cached") / "k")
    manifest = root / "kinetics-manifest.csv"
    summary = prepare(root / source.name, manifest, workers=2, progress=False, cache=[SPEC])
    return manifest, summary


def test_prepare_writes_a_cache_of_every_usable_clip(cached):
    manifest, summary = cached
    assert summary["clips"] == 12 and list(summary["caches"]) == ["8fps-32x32-16000hz"]
    table = read_manifest(manifest, split="*")
    cache = DecodedCache.find(manifest, SPEC)
    assert cache is not None and len(cache) == len(table) == 12
    for i in range(len(table)):
        got, full = cache.get(table.key(i)), media.decode(table.path(i), SPEC)
        assert np.array_equal(got.frames, full.frames) and np.array_equal(got.audio, full.audio)
        assert got.duration_s == full.duration_s and got.has_audio
    assert cache.get("not/in/the/manifest.mp4") is None


def test_cached_windows_are_the_decoded_windows(cached):
    manifest, _ = cached
    table = read_manifest(manifest)
    targets = table.label_index(table.labels)
    cache = find_cache(table, SPEC)
    with_cache = StreamingWindows(table, SPEC, targets, seed=5, cache=cache)
    without = StreamingWindows(table, SPEC, targets, seed=5)
    for epoch in range(3):
        with_cache.epoch = without.epoch = epoch
        for i in range(len(table)):
            assert all(torch.equal(a, b) for a, b in zip(with_cache[i][:3], without[i][:3], strict=True))
    val = read_manifest(manifest, val=True)
    for a, b in zip(ClipWindows(val, SPEC, val.label_index(table.labels), cache=cache),
                    ClipWindows(val, SPEC, val.label_index(table.labels)), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and len(a[0]) >= 1
    spec = clip_spec_for("avsync_tiny")
    source = PairSource(table, spec, (0.5, 1.4))
    pairs_cached = PairWindows(source, 0, StreamOptions(), cache=DecodedCache.find(manifest, spec))
    pairs = PairWindows(source, 0, StreamOptions())
    for job in source.step_jobs(seed=0, step=3, batch_size=8, flip=True, other=False, mine=list(range(8))):
        assert all(torch.equal(a, b) for a, b in zip(pairs_cached[job][:3], pairs[job][:3], strict=True))


def test_shards_roll_over_and_an_unfinished_cache_is_ignored(cached, tmp_path):
    manifest, _ = cached
    table = read_manifest(manifest, split="*")
    root = tmp_path / "c"
    writer = CacheWriter(root, SPEC, shard_bytes=1 << 20)  # about 2 clips a shard
    decoded = [media.decode(table.path(i), SPEC) for i in range(5)]
    for i, d in enumerate(decoded):
        writer.add(table.key(i), d)
    assert not (root / "index.npz").exists()  # unfinished: nothing to read yet
    writer.close()
    assert len(list(root.glob("frames-*.u8"))) >= 3
    cache = DecodedCache(root)
    for i, d in enumerate(decoded):
        got = cache.get(table.key(i))
        assert np.array_equal(got.frames, d.frames) and np.array_equal(got.audio, d.audio)
    assert DecodedCache.find(tmp_path / "elsewhere.csv", SPEC) is None


def run_cli(args: list[str]) -> tuple[int, dict | None]:
    code, answer, _ = cli(args)
    return code, answer


def test_training_from_the_cache_gives_the_weights_of_decoding(cached, tmp_path):
    """The same run with the cache and without it ends with the same weights; with the cache, a file broken after
    prepare is not even read."""
    manifest, _ = cached
    args = ["train-action", "model=av_action_tiny", f"data.train={manifest}", f"data.val={manifest}",
            "optim.epochs=2", "optim.batch_size=4", "stream.workers=1", "threads=1", "progress=false",
            "deterministic=true"]
    code, from_cache = run_cli([*args, f"out={tmp_path / 'cache'}"])
    assert code == 0
    code, decoded = run_cli([*args, f"out={tmp_path / 'decode'}", "stream.cache=false"])
    assert code == 0
    a, b = (load_checkpoint(tmp_path / d / "last.pt")["state_dict"] for d in ("cache", "decode"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert from_cache["val_accuracy"] == decoded["val_accuracy"]
    table = read_manifest(manifest)
    Path(table.path(0)).write_bytes(b"\0" * 1000)  # broken after prepare
    code, answer = run_cli([*args, f"out={tmp_path / 'broken'}"])
    assert code == 0 and answer["windows_skipped"] == 0
    assert cache_dir(manifest, SPEC).is_dir()
