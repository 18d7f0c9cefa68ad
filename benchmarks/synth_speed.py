"""SynthAV generation speed: clips/s for rendering alone and for rendering + writing (mp4 + wavs).

    python -m benchmarks.synth_speed [--n 40] [--seed 0] [--out benchmarks/results/synth_speed.json]

(run from the repository root, or with the package installed).

Writes a JSON record and prints a markdown table. Single process; clips use the default ``WorldConfig``.
"""

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from training.data.synthav import WorldConfig, render_action_clip, write_action_dataset

log = logging.getLogger(__name__)


def measure(n: int, seed: int, config: WorldConfig) -> dict:
    """Time ``n`` renders, then ``n`` renders + writes of the same clips; returns clips/s for both."""
    render_action_clip([seed, 0], label=0, config=config)  # warm-up (imports, allocator)
    t0 = time.perf_counter()
    for i in range(n):
        render_action_clip([seed, i], label=i % 8, config=config)
    render_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_action_dataset(Path(tmp) / "ds", n=n, seed=seed, config=config)
        write_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (Path(tmp) / "ds").rglob("*") if p.is_file())
    return {
        "n": n,
        "seed": seed,
        "config": asdict(config),
        "render_s": round(render_s, 3),
        "render_clips_per_s": round(n / render_s, 2),
        "render_write_s": round(write_s, 3),
        "render_write_clips_per_s": round(n / write_s, 2),
        "dataset_mb": round(size / 2**20, 2),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="clips per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "synth_speed.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = measure(args.n, args.seed, WorldConfig())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    c = result["config"]
    print(
        f"SynthAV actions, {c['width']}x{c['height']} @ {c['fps']} fps, {c['duration_s']} s clips, n={args.n}"
    )
    print()
    print("| stage | seconds | clips/s |")
    print("|---|---:|---:|")
    print(f"| render | {result['render_s']} | {result['render_clips_per_s']} |")
    rw_s, rw_rate = result["render_write_s"], result["render_write_clips_per_s"]
    print(f"| render + write (mp4, 2 wav) | {rw_s} | {rw_rate} |")
    print()
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
