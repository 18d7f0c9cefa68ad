"""Separation inference cost: ONNX Runtime windows/s of published separation graphs, measured in one run.

    python benchmarks/separation_speed.py --model shipped=model_store/models \
        --model audio_only=runs/stores/audio_only [--batch 8] [--rounds 5] [--seconds 2]

The first ``--model`` is the reference. Rounds alternate between the models so that load on a shared machine
hits them alike; the median round counts. ``realtime`` is seconds of audio separated per second of compute (each
sliding window adds ``hop_s`` of new audio). Writes benchmarks/results/separation_speed.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from model_store.registry import ModelStore
from model_store.runtime import load_model

RESULTS = Path(__file__).resolve().parent / "results"


def windows_per_s(model, feeds: dict[str, np.ndarray], batch: int, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.run(feeds)
        n += batch
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="name=store root (first: the reference)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    p.add_argument("--out", default=str(RESULTS / "separation_speed.json"))
    args = p.parse_args(argv)
    models, feeds = {}, {}
    rng = np.random.default_rng(0)
    for item in args.model:
        name, root = item.split("=", 1)
        m = load_model(ModelStore(root), "separation", intra_op_threads=args.threads,
                       warmup_batches=(args.batch,))
        models[name] = m
        feeds[name] = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in m.dummy_feeds(args.batch).items()}
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, m in models.items():
            rates[name].append(windows_per_s(m, feeds[name], args.batch, args.seconds))
    ref = next(iter(models))
    rows = []
    for name, m in models.items():
        med = float(np.median(rates[name]))
        hop = m.manifest.clip.hop_s or m.manifest.clip.window_s
        rows.append({"model": name, "graph": m.manifest.name, "windows_per_s": med, "rounds": rates[name],
                     "ratio_vs_reference": med / float(np.median(rates[ref])), "realtime": med * hop})
    result = {"reference": ref, "batch": args.batch, "threads": args.threads, "rows": rows,
              "platform": platform.platform(), "processor": platform.processor()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| model | graph | windows/s | vs " + ref + " | audio s per compute s |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['graph']} | {r['windows_per_s']:.1f} | {r['ratio_vs_reference']:.2f} | "
              f"{r['realtime']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
