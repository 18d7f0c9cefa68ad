"""Training throughput of every trainer on the engine: windows/s with 1 process and with 2 under torchrun.

    python benchmarks/train_speed.py                       # CPU: 1 process x 2 threads vs 2 processes x 1 thread
    python benchmarks/train_speed.py --device cuda --precision bf16 --nproc 1   # on a GPU machine

Each trainer runs its shipped model (``avsync_small``, ``separation_small_assign``, ``av_action_small``; NTL on the
action model) for a few steps on a small SynthAV set through the real CLI (``python -m training ...``, or
``torchrun --standalone --nproc_per_node=N -m training ...``), and the figure is the median of the ``windows_per_s``
column of its ``metrics.csv`` (one row per ``--log-every`` steps, the first row dropped as warm-up; NTL's rows span
whole epochs, so they include its per-epoch estimation). A window is one clip-length video input: a pretext pair
(its frames with two or three audio tracks), a separation mixture, an action clip. All configurations run in one
invocation, so their ratios compare like with like (on a shared machine, run it when nothing else is). Writes JSON
and a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def trainer_args(name: str, steps: int, cache: Path, log_every: int) -> list[str]:
    common = [f"log_every={log_every}", "progress=false", f"data.cache_dir={cache}", "data.workers=2"]
    actions, speech = "synthav:seed=9001,n=64", "synthav:seed=9001,n=32,kind=speech"
    val, val_speech = "synthav:seed=9002,n=8", "synthav:seed=9002,n=8,kind=speech"
    if name == "pretrain":
        return ["pretrain", "training/configs/avsync_default.yaml", f"data.train={actions}", f"data.val={val}",
                f"data.decoded_cache={cache}/decoded", f"optim.steps={steps}", f"eval_every={steps}", *common]
    if name == "separation":
        return ["train-separation", "training/configs/separation_default.yaml", f"data.train={speech}",
                f"data.val={val_speech}", "data.val_windows=16", f"optim.steps={steps}",
                f"optim.eval_every={steps}", *common]
    if name == "action":  # 64 clips, batch 16: 4 steps an epoch
        return ["train-action", "training/configs/action_default.yaml", f"data.train={actions}", f"data.val={val}",
                f"optim.epochs={max(1, steps // 4)}", "optim.batch_size=16", *common]
    if name == "ntl":
        return ["train-action", "--method", "ntl", "training/configs/action_ntl.yaml", f"data.train={actions}",
                f"data.val={val}", f"optim.epochs={max(2, steps // 4)}", "optim.batch_size=16",
                f"array_cache={cache}/arrays", *common]
    raise ValueError(name)


def run_one(name: str, nproc: int, threads: int, args: argparse.Namespace, cache: Path, out: Path) -> dict:
    cmd = trainer_args(name, args.steps, cache, args.log_every)
    cmd += [f"out={out}", f"threads={threads}", f"device={args.device}", f"precision={args.precision}"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "-m", "training"]
    else:
        launcher = [sys.executable, "-m", "training"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run([*launcher, *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} x{nproc} failed:\n{proc.stderr[-3000:]}")
    with (out / "metrics.csv").open(newline="") as fh:
        rates = [float(r["windows_per_s"]) for r in csv.DictReader(fh) if r.get("windows_per_s")]
    kept = rates[1:] or rates
    return {"trainer": name, "processes": nproc, "threads_per_process": threads, "device": args.device,
            "precision": args.precision, "windows_per_s": statistics.median(kept), "rows": len(kept),
            "wall_s": round(wall, 1)}


def markdown(rows: list[dict]) -> str:
    lines = ["| trainer | processes x threads | device | windows/s | vs first row of the trainer |",
             "| --- | --- | --- | --- | --- |"]
    base: dict[str, float] = {}
    for r in rows:
        ref = base.setdefault(r["trainer"], r["windows_per_s"])
        lines.append(f"| {r['trainer']} | {r['processes']} x {r['threads_per_process']} | {r['device']} "
                     f"({r['precision']}) | {r['windows_per_s']:.1f} | {r['windows_per_s'] / ref:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trainers", default="pretrain,separation,action,ntl")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--log-every", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--configs", default="1x1,1x2,2x1", help="processes x threads per process, comma-separated")
    p.add_argument("--cache", default="data/bench", help="SynthAV data rendered here once")
    p.add_argument("--json", default="benchmarks/results/train_speed.json")
    args = p.parse_args()
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.trainers.split(","):
            for nproc, threads in configs:
                row = run_one(name, nproc, threads, args, Path(args.cache).resolve(),
                              Path(tmp) / f"{name}-{nproc}x{threads}")
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {"rows": rows, "steps": args.steps, "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "python": platform.python_version()}
    try:
        import torch

        result["torch"] = torch.__version__
        if args.device.startswith("cuda"):
            result["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(rows)
    Path(args.json).with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
