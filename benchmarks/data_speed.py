"""Streaming data speed and memory (issue #13).

    python benchmarks/data_speed.py                        # both parts; figures into benchmarks/results/
    python benchmarks/data_speed.py --part speed --windows 96 --gops 250,50
    python benchmarks/data_speed.py --part memory --rows 100000 --memory-windows 3000

**Speed.** Windows/s of :class:`training.data.streaming.StreamingWindows` (seek, decode forward, resize 16 frames to
64x64 RGB, resample the audio to 16 kHz: ``av_action_small``'s clip spec, a 2 s window) through a DataLoader with 0,
1 and 2 worker processes, against bare PyAV decode-only of the same windows (open, seek to the window's start,
decode video and audio packets up to its end: no conversion, no resampling, one process). Clips: 10 s, 640x360,
25 fps, h264 (libx264, the given GOP length: 250 is x264's default, what an ``ffmpeg`` trim of a YouTube video gives,
one keyframe per clip, so every window decodes from the clip's start; 50 is a keyframe every 2 s) with aac audio,
made here with PyAV. The windows are the dataset's own draws (start from ``[seed, epoch, index]``), so both sides
decode the same list; the last column cuts them from the decoded cache ``prepare --cache`` would write (the clips
decoded once, memory-mapped). The first batch (worker start-up) is excluded from every timing. Every configuration
runs in the same invocation, ``--rounds`` times in turn (the median is reported), so the ratios compare like with
like; on a shared machine the absolute figures move.

**Memory.** A manifest of ``--rows`` rows (the same few small clips repeated) is read into its
:class:`~training.data.collection.ClipTable` and iterated for ``--memory-windows`` windows with 2 workers; the
resident memory (RSS) of the main process and of the workers, and their proportional share (PSS, which counts pages
the workers share, through the fork server they are forked from, once), are sampled as it goes. Flat figures mean
the table is not copied into the workers page by page (what Python lists of per-row objects do through reference
counting).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_store.manifest import ClipSpec  # noqa: E402
from model_store.media import decode  # noqa: E402
from training.data.cache import CacheWriter, DecodedCache, cache_dir  # noqa: E402
from training.data.collection import ManifestRow, read_manifest, write_manifest  # noqa: E402
from training.data.streaming import StreamingWindows, frame_start, seed_worker  # noqa: E402
from training.models import clip_spec_for  # noqa: E402

SEED, EPOCH = 0, 0


def make_clip(path: Path, seed: int, width: int = 640, height: int = 360, fps: int = 25, seconds: float = 10.0,
              gop: int = 250, sample_rate: int = 44100) -> Path:
    """A moving textured scene (a drifting gradient, a bouncing square, grain) with a tone and clicks: enough
    detail that the encoder and decoder do real work."""
    rng = np.random.default_rng(seed)
    n = int(seconds * fps)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.options = {"preset": "veryfast", "crf": "23", "g": str(gop)}
        a = out.add_stream("aac", rate=sample_rate, layout="mono")
        for k in range(n):
            base = 127 + 80 * np.sin((xx + 3 * k) / 37.0) * np.cos((yy - 2 * k) / 23.0)
            img = np.repeat(base[..., None], 3, axis=2)
            x0, y0 = int((k * 7) % (width - 60)), int(abs((k * 5) % (2 * (height - 60)) - (height - 60)))
            img[y0:y0 + 60, x0:x0 + 60] = (230, 40 + k % 200, 60)
            img += rng.normal(0, 6, img.shape)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, fps)
            out.mux(v.encode(frame))
        out.mux(v.encode())
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        audio = (0.2 * np.sin(2 * np.pi * (220 + 40 * seed) * t)).astype(np.float32)
        for c in rng.uniform(0, seconds, 12):
            i = int(c * sample_rate)
            audio[i:i + 200] += 0.5
        size = a.codec_context.frame_size or 1024
        for s in range(0, len(audio), size):
            frame = av.AudioFrame.from_ndarray(np.clip(audio[None, s:s + size], -1, 1), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = sample_rate, s, Fraction(1, sample_rate)
            out.mux(a.encode(frame))
        out.mux(a.encode())
    return path


def manifest_of(paths: list[Path], rows: int, out: Path) -> Path:
    """``rows`` rows cycling over ``paths`` (probed once each)."""
    from model_store.media import decode_span, probe

    spec = ClipSpec(fps=4.0, frames=2, height=16, width=16, sample_rate=8000, audio_samples=4000)
    info = {}
    for p in paths:
        head = probe(p)
        tail = decode_span(p, spec, max(0.0, head.duration_s - 0.5), head.duration_s + 1.0)
        info[p] = ManifestRow(str(p), tail.duration_s or head.duration_s, head.fps, head.width, head.height, True,
                              ("clip",), "train")
    write_manifest(out, (info[paths[k % len(paths)]] for k in range(rows)))
    return out


def bare_decode(path: Path, start: float, end: float) -> int:
    """Decode-only: seek to the keyframe at or before ``start`` and decode every video and audio frame up to
    ``end``; returns the frames decoded."""
    n = 0
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        v.thread_type = "AUTO"
        a = c.streams.audio[0]
        c.seek(int(start / v.time_base), stream=v, backward=True)
        v_done = a_done = False
        for packet in c.demux(v, a):
            for frame in packet.decode():
                n += 1
                t = frame.time if frame.time is not None else 0.0
                if isinstance(frame, av.VideoFrame):
                    v_done = v_done or t >= end
                else:
                    a_done = a_done or t >= end
            if v_done and a_done:
                break
    return n


def windows_list(table, spec: ClipSpec, n: int) -> list[tuple[Path, float]]:
    """The (file, start) the dataset draws for items 0..n-1 (epoch 0)."""
    out = []
    for i in range(n):
        start = frame_start(np.random.default_rng([SEED, EPOCH, i]), *table.span(i), spec)
        out.append((table.path(i), start))
    return out


def time_bare(windows: list[tuple[Path, float]], spec: ClipSpec, batch: int) -> float:
    for path, start in windows[:batch]:  # warm-up, as the loaders' first batch
        bare_decode(path, start, start + spec.window_s)
    t = time.perf_counter()
    for path, start in windows[batch:]:
        bare_decode(path, start, start + spec.window_s)
    return (len(windows) - batch) / (time.perf_counter() - t)


def time_stream(table, spec: ClipSpec, workers: int, n: int, batch: int, cache: DecodedCache | None = None) -> float:
    import torch
    from torch.utils.data import DataLoader, Subset

    torch.set_num_threads(1)
    dataset = StreamingWindows(table, spec, np.zeros(len(table), dtype=np.int64), seed=SEED, cache=cache)
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch, num_workers=workers,
                        worker_init_fn=seed_worker if workers else None, prefetch_factor=2 if workers else None)
    it = iter(loader)
    next(it)  # worker start-up and the first batch
    t = time.perf_counter()
    count = sum(len(b[0]) for b in it)
    return count / (time.perf_counter() - t)


def speed(args: argparse.Namespace, tmp: Path) -> dict:
    spec = clip_spec_for("av_action_small")
    rows = []
    for gop in [int(g) for g in args.gops.split(",")]:
        clips = [make_clip(tmp / f"clip{k}_g{gop}.mp4", k, gop=gop) for k in range(args.clips)]
        table = read_manifest(manifest_of(clips, args.windows, tmp / f"speed_g{gop}.csv"))
        windows = windows_list(table, spec, args.windows)
        writer = CacheWriter(cache_dir(tmp / f"speed_g{gop}.csv", spec), spec)  # what prepare --cache writes
        t = time.perf_counter()
        for key in dict.fromkeys(table.key(i) for i in range(len(table))):
            writer.add(key, decode(key, spec))
        cache = DecodedCache(writer.close())
        cache_s = time.perf_counter() - t
        runs: dict[str, list[float]] = {}
        for _ in range(args.rounds):  # alternating, so that a busy spell of a shared machine hits every config
            runs.setdefault("bare_decode", []).append(time_bare(windows, spec, args.batch))
            for w in (0, 1, 2):
                runs.setdefault(f"stream_{w}_workers", []).append(time_stream(table, spec, w, args.windows,
                                                                              args.batch))
            runs.setdefault("cache_0_workers", []).append(time_stream(table, spec, 0, args.windows, args.batch,
                                                                      cache))
        row = {"gop": gop, **{k: float(np.median(v)) for k, v in runs.items()}, "rounds": runs,
               "cache_write_s_per_clip": cache_s / len(cache)}
        for w in (0, 1, 2):
            row[f"ratio_{w}_workers"] = row[f"stream_{w}_workers"] / row["bare_decode"]
        print(json.dumps({k: round(v, 3) for k, v in row.items() if isinstance(v, float)} | {"gop": gop}), flush=True)
        rows.append(row)
    return {"spec": spec.model_dump(), "clips": f"{args.clips} x 10 s, 640x360, 25 fps, h264 + aac",
            "windows": args.windows, "batch": args.batch, "rounds": args.rounds, "rows": rows}


def _mem(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of ``pid`` in MiB."""
    rss = pss = 0.0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) / 1024
    except OSError:
        pss = float("nan")
    return rss, pss


def memory(args: argparse.Namespace, tmp: Path) -> dict:
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    spec = clip_spec_for("av_action_tiny")
    clips = [make_clip(tmp / f"small{k}.mp4", k, width=160, height=96, seconds=4.0, gop=50) for k in range(4)]
    path = manifest_of(clips, args.rows, tmp / "rows.csv")
    before = _mem(os.getpid())
    t = time.perf_counter()
    table = read_manifest(path)
    load_s = time.perf_counter() - t
    after_load = _mem(os.getpid())
    dataset = StreamingWindows(table, spec, np.zeros(len(table), dtype=np.int64), seed=SEED)
    order = np.random.default_rng(0).permutation(len(table))[:args.memory_windows]
    loader = DataLoader(dataset, sampler=order.tolist(), batch_size=32, num_workers=2, worker_init_fn=seed_worker)
    samples = []
    it = iter(loader)
    seen = 0
    t = time.perf_counter()
    for k, batch in enumerate(it):
        seen += len(batch[0])
        if k % 10 == 0:
            pids = [os.getpid(), *[w.pid for w in it._workers]]
            mems = [_mem(p) for p in pids]
            samples.append({"windows": seen, "main_rss": mems[0][0], "workers_rss": [m[0] for m in mems[1:]],
                            "total_rss": sum(m[0] for m in mems), "total_pss": sum(m[1] for m in mems)})
    seconds = time.perf_counter() - t
    result = {"rows": len(table), "manifest_mib": path.stat().st_size / 2**20, "load_s": load_s,
              "main_rss_before_load": before[0], "main_rss_after_load": after_load[0], "windows": seen,
              "windows_per_s": seen / seconds, "samples": samples}
    first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    result["rss_growth_mib"] = last["total_rss"] - first["total_rss"]
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}), flush=True)
    return result


def markdown(res: dict) -> str:
    lines = []
    if "speed" in res:
        s = res["speed"]
        lines += [f"### Streaming windows/s ({s['clips']}; window: 16 frames at 8 fps, 64x64, 16 kHz; "
                  f"{s['windows']} windows, batch {s['batch']}; median of {s['rounds']} alternating rounds)", "",
                  "| GOP | bare PyAV decode-only | stream, 0 workers | 1 worker | 2 workers | decoded cache, 0 "
                  "workers |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in s["rows"]:
            cells = [f"{r[f'stream_{w}_workers']:.1f} ({r[f'ratio_{w}_workers']:.2f}x)" for w in (0, 1, 2)]
            cells.append(f"{r['cache_0_workers']:.0f} ({r['cache_0_workers'] / r['bare_decode']:.0f}x)")
            lines.append(f"| {r['gop']} | {r['bare_decode']:.1f} | " + " | ".join(cells) + " |")
        lines.append("")
    if "memory" in res:
        m = res["memory"]
        lines += [f"### Memory: {m['rows']:,} manifest rows ({m['manifest_mib']:.1f} MiB CSV, read in "
                  f"{m['load_s']:.2f} s), {m['windows']} windows with 2 workers", "",
                  "| windows | main RSS (MiB) | workers RSS (MiB) | total RSS | total PSS |",
                  "| --- | --- | --- | --- | --- |"]
        picks = m["samples"][:: max(1, len(m["samples"]) // 8)]
        if picks[-1] is not m["samples"][-1]:
            picks.append(m["samples"][-1])
        for smp in picks:
            lines.append(f"| {smp['windows']} | {smp['main_rss']:.0f} | "
                         f"{' + '.join(f'{w:.0f}' for w in smp['workers_rss'])} | {smp['total_rss']:.0f} | "
                         f"{smp['total_pss']:.0f} |")
        lines += ["", f"Main process RSS before / after reading the manifest: {m['main_rss_before_load']:.0f} / "
                      f"{m['main_rss_after_load']:.0f} MiB; total RSS change from the second sample to the last: "
                      f"{m['rss_growth_mib']:+.1f} MiB."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["speed", "memory", "both"], default="both")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--windows", type=int, default=96)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--gops", default="250,50")
    p.add_argument("--rounds", type=int, default=3, help="alternating repetitions; the median is reported")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--memory-windows", type=int, default=3000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_speed"))
    args = p.parse_args()
    res: dict = {"command": " ".join(["python", *sys.argv]), "machine": platform.platform(),
                 "cpus": os.cpu_count(), "pyav": av.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("speed", "both"):
            res["speed"] = speed(args, Path(tmp))
        if args.part in ("memory", "both"):
            res["memory"] = memory(args, Path(tmp))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
