"""The service under load: 1, 8 and 32 clients posting 10-second and 5-minute videos to a real uvicorn server.

    python benchmarks/serve_load.py [--route /v1/actions] [--clients 1 8 32] [--videos 10 300] [--seconds 45 120]
        [--rounds 3]
        [--size 320x180@24] [--providers CPUExecutionProvider] [--env AVSCENE_MAX_WINDOWS_IN_FLIGHT=256 ...]

For each video length and client count, that many clients (threads, each with its own keep-alive connection)
post the video to ``--route`` back to back for ``--seconds`` (per video length; after a 503 a client waits as
its ``Retry-After`` says), then the requests still running are waited for. That time is split over ``--rounds``
rounds, each running every client count in turn, so that other load on a shared machine hits all client counts
alike (their answers are pooled). Per scenario: successful answers per second (``throughput``; ``x1``: the ratio
to one client's, measured in the same run), p50/p95/max latency of the successes, the share of 503 answers and
their slowest latency, any other status, the server's peak RSS (``VmHWM`` of the server process and of its decode
workers, summed; reset before each scenario through ``/proc/<pid>/clear_refs``; sampled RSS where that is not
allowed), and the CPU the server and its workers used (``server cores busy``: their CPU seconds over the wall
seconds; ``CPU per answer``: over the successes),
which says whether more clients found idle cores or the machine, shared with other jobs, had none left; beside it
the cores the clients themselves used (this process: they share the machine with the server) and the cores busy
with anything else (``/proc/stat``), so that a throughput limit can be told from a machine that had no core left.

Targets (issue #15, on a 2-core machine): 8 clients >= 1.5x the throughput of 1; with 32 clients every answer
is a success or a 503 within 2 s, p95 of the successes under 4x one client's latency, peak RSS under 1.5 GB with
the default settings. ``--providers CUDAExecutionProvider`` (or TensorRT) runs the same on a GPU machine.
Videos are generated here (PyAV: libx264 + aac, a moving texture). Writes benchmarks/results/serve_load.json and
serve_load.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_speed import parse_size, write_report, write_video  # noqa: E402

log = logging.getLogger("serve_load")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``uvicorn app.main:app`` in a subprocess, configured by ``AVSCENE_*`` variables."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                                       os.environ.get("PYTHONPATH")]))}
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                                      "--port", str(self.port), "--log-level", "warning"],
                                     cwd=REPO, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}; see {log_path}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server was not ready in 120 s; see {log_path}")

    def pids(self) -> list[int]:
        """The server and every process under it (its decode workers and the forkserver that starts them)."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo.extend(int(c) for c in task.read_text().split())
                except OSError:  # gone meanwhile
                    pass
        return out

    def _read(self, name: str) -> list[str]:
        """/proc/PID/``name`` of each of :meth:`pids` (those that ended meanwhile left out)."""
        texts = []
        for pid in self.pids():
            try:
                texts.append(Path(f"/proc/{pid}/{name}").read_text())
            except OSError:
                pass
        return texts

    def status(self, key: str) -> int:
        """``key`` of /proc/PID/status (VmRSS, VmHWM) summed over :meth:`pids`: for the peak, the sum of each
        process's own peak, which is at least the peak of their sum."""
        return sum(int(line.split()[1]) * 1024 for text in self._read("status") for line in text.splitlines()
                   if line.startswith(key + ":"))

    def cpu_s(self) -> float:
        """CPU time the server and its processes have used so far (all threads, user + system), in seconds."""
        fields = [text.rpartition(")")[2].split() for text in self._read("stat")]
        return sum(int(f[11]) + int(f[12]) for f in fields) / os.sysconf("SC_CLK_TCK")

    def reset_peak(self) -> bool:
        try:
            for pid in self.pids():
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def scenario(server: Server, route: str, video: bytes, clients: int, seconds: float) -> dict:
    """``clients`` clients posting ``video`` for ``seconds``: the raw answers, the time taken and the peak RSS."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    peak_sampled = [server.status("VmRSS")]
    sampling = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.base, timeout=600) as http:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                retry_after = 0.0
                try:
                    r = http.post(route, files={"file": ("video.mp4", video, "video/mp4")})
                    status, retry_after = r.status_code, float(r.headers.get("retry-after", 0))
                except httpx.HTTPError:
                    status = -1
                with lock:
                    results.append((status, time.perf_counter() - t0))
                if status == 503:
                    time.sleep(min(retry_after, max(0.0, stop_at - time.monotonic())))  # as Retry-After asks

    def sample() -> None:
        while not sampling.is_set():
            peak_sampled[0] = max(peak_sampled[0], server.status("VmRSS"))
            time.sleep(0.05)

    exact = server.reset_peak()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0, cpu0, own0, busy0 = time.perf_counter(), server.cpu_s(), time.process_time(), machine_busy_s()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - t0, server.cpu_s() - cpu0
    clients_cpu, machine_cpu = time.process_time() - own0, machine_busy_s() - busy0
    sampling.set()
    sampler.join()
    peak = server.status("VmHWM") if exact else peak_sampled[0]
    return {"results": results, "seconds": elapsed, "cpu_s": cpu, "clients_cpu_s": clients_cpu,
            "machine_cpu_s": machine_cpu, "peak_rss_bytes": peak, "peak_rss_exact": exact}


def machine_busy_s() -> float:
    """CPU seconds all cores of the machine have spent busy so far (``/proc/stat``: everything but idle and
    iowait), so a scenario can say how many cores were left over for the server."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def summarize(clients: int, runs: list[dict]) -> dict:
    """One client count's rounds together: answers pooled, time summed, the highest peak."""
    results = [r for run in runs for r in run["results"]]
    elapsed = sum(run["seconds"] for run in runs)
    cpu = sum(run["cpu_s"] for run in runs)
    clients_cpu = sum(run["clients_cpu_s"] for run in runs)
    machine_cpu = sum(run["machine_cpu_s"] for run in runs)
    ok = np.array([lat for s, lat in results if s == 200])
    refused = np.array([lat for s, lat in results if s == 503])
    other = sorted({s for s, _ in results if s not in (200, 503)})
    return {
        "clients": clients, "rounds": len(runs), "seconds": elapsed, "answers": len(results),
        "successes": int(len(ok)), "throughput_per_s": len(ok) / elapsed,
        "server_cores": cpu / elapsed, "client_cores": clients_cpu / elapsed,
        "other_cores": max(0.0, machine_cpu - cpu - clients_cpu) / elapsed,
        "server_cpu_per_success_s": cpu / len(ok) if len(ok) else None,
        "p50_s": float(np.percentile(ok, 50)) if len(ok) else None,
        "p95_s": float(np.percentile(ok, 95)) if len(ok) else None,
        "max_s": float(ok.max()) if len(ok) else None,
        "share_503": len(refused) / max(len(results), 1),
        "max_503_s": float(refused.max()) if len(refused) else None,
        "other_statuses": other, "peak_rss_bytes": max(run["peak_rss_bytes"] for run in runs),
        "peak_rss_exact": all(run["peak_rss_exact"] for run in runs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--route", default="/v1/actions")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--videos", type=float, nargs="+", default=[10.0, 300.0], help="video lengths, seconds")
    p.add_argument("--seconds", type=float, nargs="+", default=[45.0, 120.0],
                   help="how long clients keep posting, per video length (split over the rounds)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per video length, each running every client "
                   "count in turn for its share of --seconds, so that load from other processes hits all alike")
    p.add_argument("--size", default="320x180@24", help="WxH@fps of the generated videos")
    p.add_argument("--providers", default="CPUExecutionProvider",
                   help="AVSCENE_PROVIDERS, e.g. TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider")
    p.add_argument("--env", nargs="*", default=[], help="more server settings, KEY=VALUE")
    p.add_argument("--out", type=Path, default=RESULTS / "serve_load.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if len(args.seconds) != len(args.videos):
        raise SystemExit("--seconds needs one value per --videos length")
    width, height, fps = parse_size(args.size)
    env = {"AVSCENE_PROVIDERS": args.providers, **dict(kv.split("=", 1) for kv in args.env)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        env.setdefault("AVSCENE_RESULTS_DIR", str(Path(tmp) / "results"))
        videos = {}
        for length in args.videos:
            path = write_video(Path(tmp) / f"{length:g}s.mp4", length, width, height, fps)
            videos[length] = path.read_bytes()
            log.info("video %g s: %d bytes", length, len(videos[length]))
        server = Server(env, Path(tmp) / "server.log")
        try:
            base_rss = server.status("VmRSS")
            for length, seconds in zip(args.videos, args.seconds, strict=True):
                runs: dict[int, list[dict]] = {clients: [] for clients in args.clients}
                for _ in range(args.rounds):
                    for clients in args.clients:
                        runs[clients].append(scenario(server, args.route, videos[length], clients,
                                                      seconds / args.rounds))
                for clients in args.clients:
                    row = {"video_s": length, **summarize(clients, runs[clients])}
                    rows.append(row)
                    log.info("%g-s video, %d clients: %s", length, clients,
                             {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
        finally:
            server.stop()
            server_log = (Path(tmp) / "server.log").read_text(errors="replace")
    for row in rows:
        single = next(r for r in rows if r["video_s"] == row["video_s"] and r["clients"] == min(args.clients))
        row["throughput_x1"] = row["throughput_per_s"] / single["throughput_per_s"] if single["successes"] else None
        row["p95_x1"] = row["p95_s"] / single["p50_s"] if row["p95_s"] and single["p50_s"] else None
        row["p95_x1_p95"] = row["p95_s"] / single["p95_s"] if row["p95_s"] and single["p95_s"] else None
    result = {"route": args.route, "size": args.size, "rounds": args.rounds, "providers": args.providers, "env": env,
              "rows": rows,
              "server_rss_after_start_bytes": base_rss, "tracebacks_in_server_log": server_log.count("Traceback"),
              "cpu_count": os.cpu_count(), "platform": platform.platform()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    def fmt(v: float | None, unit: str = "s", digits: int = 2) -> str:
        return "-" if v is None else f"{v:.{digits}f}{unit}"

    lines = ["| video | clients | answers | throughput (/s) | vs 1 client | p50 | p95 | p95 / 1-client p50 | "
             "p95 / 1-client p95 | 503 share | slowest 503 | other | peak RSS | server cores busy | CPU per answer | "
             "client cores busy | other processes' cores |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: "
             "| ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['video_s']:g} s | {r['clients']} | {r['answers']} | {r['throughput_per_s']:.3f} | "
                     f"{fmt(r['throughput_x1'], 'x')} | {fmt(r['p50_s'])} | {fmt(r['p95_s'])} | "
                     f"{fmt(r['p95_x1'], 'x')} | {fmt(r['p95_x1_p95'], 'x')} | {r['share_503']:.0%} | "
                     f"{fmt(r['max_503_s'])} | {r['other_statuses'] or '-'} | {r['peak_rss_bytes'] / 2**20:.0f} MiB | "
                     f"{r['server_cores']:.2f} | {fmt(r['server_cpu_per_success_s'])} | {r['client_cores']:.2f} | "
                     f"{r['other_cores']:.2f} |")
    table = "\n".join(lines) + "\n"
    write_report(args.out, "serve_load.py", argv,
                 f"Route {args.route}, {args.size} videos, providers {args.providers}, server RSS after start "
                 f"{base_rss / 2**20:.0f} MiB.\n\n{table}")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
