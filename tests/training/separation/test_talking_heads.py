"""Separation from a real talking-head collection (mix-and-separate): ``prepare`` a ``<speaker>/<video>/<clip>.mp4``
folder with bad files mixed in, then train on its manifest, in one process and under torchrun with two."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np

from training.cli import main
from training.utils import load_checkpoint


def _args(manifest: Path, cache: Path) -> list[str]:
    return ["train-separation", "model=separation_tiny_assign", f"data.train={manifest}", f"data.val={manifest}",
            f"data.cache_dir={cache}", "data.workers=1", "data.val_windows=8", "optim.steps=4", "optim.batch_size=4",
            "optim.eval_every=2", "progress=false", "threads=1", "log_every=1", "loss.sync=1.0"]


def _losses(out: Path) -> list[float]:
    with (out / "metrics.csv").open(newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh) if r.get("loss")]


def test_talking_heads_train_separation_mix_and_separate(heads_manifest, run_torchrun, tmp_path) -> None:
    manifest, summary = heads_manifest
    assert summary["layout"] == "talking_heads" and summary["skipped"]  # the corrupt and silent files, reported
    cache = tmp_path / "cache"
    one = tmp_path / "one"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([*_args(manifest, cache), f"out={one}"]) == 0
    answer = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert np.isfinite(answer["val_si_sdri_on"]) and np.isfinite(answer["val_si_sdri_off"])
    cached = list(cache.glob("*.npz"))
    assert len(cached) == 1
    z = np.load(cached[0])
    assert int(z["n"]) == 8 and len(set(z["speakers"].tolist())) == 4 and "off0" not in z  # own audio only

    two = tmp_path / "two"
    proc = run_torchrun(_args(manifest, cache), two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = load_checkpoint(two / "last.pt")
    assert last["world_size"] == 2 and last["finished"]
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 4 and np.isfinite(b).all()
    rel = [abs(x - y) / max(abs(x), 1e-3) for x, y in zip(a, b, strict=True)]
    assert max(rel) < 0.15, (a, b)  # the same global batches, split over two ranks (BatchNorm per rank)
