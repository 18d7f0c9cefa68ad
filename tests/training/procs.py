"""``python -m training`` for the tests: :func:`torchrun`, two ranks on gloo, in a process group of their own that is
killed whole when it overruns (killing only the launcher would leave the ranks holding the output pipes, and the
test waiting on them forever); :func:`run_cli`, one command in this process; :func:`metric_rows`, a run's
metrics.csv."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from training.cli import main

ROOT = Path(__file__).resolve().parents[2]


def torchrun(args: list[str], out: Path | None = None, nproc: int = 2, timeout: float = 600
             ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "training", *args, *([f"out={out}"] if out is not None else [])]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"torchrun overran {timeout:.0f} s and was killed: {' '.join(args)}\n"
                             f"{stderr[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def run_cli(args: list[str]) -> tuple[int, dict | None, str]:
    """``python -m training ARGS`` in this process: (exit code, the JSON answer it printed last or None, stderr).
    torch's thread count is restored afterwards (a run sets its own)."""
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
    finally:
        torch.set_num_threads(threads)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("{")]
    return code, json.loads(lines[-1]) if lines else None, err.getvalue()


def metric_rows(out: Path) -> list[dict[str, str]]:
    """The rows of ``out/metrics.csv``."""
    with (out / "metrics.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))
