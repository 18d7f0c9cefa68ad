"""What the guided refinement of the avsync heatmaps costs, against the network's own inference, in one run.

    python benchmarks/heatmap_refine.py [--seconds 10 60 600] [--repeats 3]

For videos of each length (a SynthAV clip's decoded windows, tiled to the length), on the shipped avsync model:
ONNX Runtime inference of every window (the reference), then ``video_heatmaps`` as the CAM itself and refined as
the manifest says, and the size of the ``format=json`` body either way. Writes
benchmarks/results/heatmap_refine.json and prints a markdown table with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from model_store import DEFAULT_ROOT
from model_store.heatmaps import video_heatmaps
from model_store.media import load_windows, normalize_video
from model_store.registry import ModelStore
from model_store.runtime import load_model

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def json_bytes(maps) -> int:
    frames = [{"t_s": round(float(t), 4), "heatmap": np.round(m, 4).tolist()} for t, m in zip(maps.times_s, maps.maps,
                                                                                             strict=True)]
    return len(json.dumps(frames, separators=(",", ":")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--clip", type=Path, default=None, help="an mp4 (default: the first clip of SynthAV seed 1000)")
    ap.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0, 600.0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "heatmap_refine.json")
    args = ap.parse_args()

    model = load_model(ModelStore(args.root), "avsync")
    manifest, clip = model.manifest, model.manifest.clip
    if manifest.heatmap is None:
        raise SystemExit(f"{args.root}: the avsync model's manifest has no heatmap refinement to measure")
    path = args.clip
    if path is None:
        from training.data.datasets import read_records, resolve_data

        path = read_records(resolve_data("synthav:seed=1000,n=200", "data/synthav"))[0].video
    base = load_windows(path, clip)
    rows = []
    for seconds in args.seconds:
        n = max(1, round(seconds / clip.window_s))
        video = np.resize(base.video, (n, *base.video.shape[1:]))
        audio = np.resize(base.audio, (n, *base.audio.shape[1:]))
        starts = np.arange(n) * clip.window_s

        def infer(video=video, audio=audio):
            cams = [model.run({"video": normalize_video(video[s:s + 32], clip), "audio": audio[s:s + 32]})["cam"]
                    for s in range(0, len(video), 32)]
            return np.concatenate(cams)

        t_infer, cam = best_of(infer, args.repeats)
        t_cam, raw = best_of(lambda cam=cam, starts=starts: video_heatmaps(cam, starts, clip.window_s), args.repeats)
        t_ref, refined = best_of(lambda cam=cam, starts=starts, video=video: video_heatmaps(
            cam, starts, clip.window_s, video, manifest.heatmap), args.repeats)
        rows.append({
            "seconds": seconds, "windows": n, "heatmap_frames": len(refined.times_s),
            "inference_s": t_infer, "cam_heatmaps_s": t_cam, "refined_heatmaps_s": t_ref,
            "refine_vs_inference": t_ref / t_infer,
            "json_bytes_cam": json_bytes(raw), "json_bytes_refined": json_bytes(refined),
            "grid_cam": list(raw.maps.shape[1:]), "grid_refined": list(refined.maps.shape[1:]),
        })
    result = {
        "model": f"{manifest.name} v{manifest.version}", "heatmap": manifest.heatmap.model_dump(),
        "providers": model.providers, "clip": str(path), "repeats": args.repeats, "rows": rows,
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| video | windows | ORT inference | refined heatmaps | refine / inference | JSON, CAM | JSON, refined |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['seconds']:g} s | {r['windows']} | {r['inference_s'] * 1e3:.0f} ms | "
              f"{r['refined_heatmaps_s'] * 1e3:.0f} ms | {r['refine_vs_inference']:.2f}x | "
              f"{r['json_bytes_cam'] / 1e3:.0f} kB | {r['json_bytes_refined'] / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
