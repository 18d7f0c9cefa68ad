"""``python -m training`` for the tests: :func:`torchrun`, two ranks on gloo, killed whole (launcher, ranks and their
loader workers) when it overruns, each rank's Python stacks first printed into the stderr the assertion shows;
:func:`run_cli`, one command in this process; :func:`metric_rows`, a run's metrics.csv.

torchrun starts each rank in a session of its own, so killing the launcher's process group leaves the ranks alive,
holding the output pipes, and the test waiting on them forever: the process tree is walked instead."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from training.cli import main

ROOT = Path(__file__).resolve().parents[2]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first, then theirs), read from /proc."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        out += frontier
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGABRT to every process under the launcher (faulthandler, on through PYTHONFAULTHANDLER, prints each one's
    Python stacks to stderr), then SIGKILL to all of them and the launcher's group."""
    tree = descendants(proc.pid)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGABRT)
    time.sleep(2.0)
    for pid in [proc.pid, *tree]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def torchrun(args: list[str], out: Path | None = None, nproc: int = 2, timeout: float = 420
             ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "training", *args, *([f"out={out}"] if out is not None else [])]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        stdout, stderr = proc.communicate(timeout=60)
        raise AssertionError(f"torchrun overran {timeout:.0f} s and was killed: {' '.join(args)}\n"
                             f"{stderr[-12000:]}") from None
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
