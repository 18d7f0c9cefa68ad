"""What the service adds: each route through a real HTTP server against the same decode + inference in-process.

    python benchmarks/serve_overhead.py [--seconds 10] [--size 320x180@24] [--rounds 9]
        [--routes actions localization separations analyze] [--env AVSCENE_KEY=VALUE ...]

The service is ``uvicorn app.main:app`` in a subprocess (default settings, CPU provider) on loopback, asked by one
client at a time with a keep-alive connection: the upload, its multipart parsing and copy, probe, admission,
decode, the micro-batcher, the answer's encoding (the heatmaps' JSON, the separated tracks' files) and its transfer.
The reference runs in this process on the same shipped models, opened with the same session settings and decoding
with the threads the service gives a decode that runs alone: ``model_store.media.load_windows`` on the file, the
task's feeds, ``session.run`` in chunks of ``AVSCENE_MAX_BATCH`` windows, and the pipeline's reading of the outputs
(``read_actions``; ``source_heatmaps`` refined as the manifest says; ``separated_tracks``; for ``analyze`` one
decode per distinct clip spec and all three). What the reference leaves out is what the service costs on top.

Routes: ``actions`` (``POST /v1/actions``), ``localization`` (``POST /v1/localization``, JSON, refined heatmaps),
``separations`` (``POST /v1/separations``, answered at once: the tracks written, not downloaded) and ``analyze``
(``POST /v1/analyze``: all three). Each round runs every route through the service and in-process back to back,
so load from other processes on a shared machine hits both alike; ``ratio`` = service time / in-process time, the
median of the rounds' ratios (the issue's target: <= 1.15). Writes benchmarks/results/serve_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_speed import parse_size, write_report, write_video  # noqa: E402
from serve_load import Server  # noqa: E402

from app.service import _cores  # noqa: E402
from app.settings import Settings  # noqa: E402
from model_store.media import Decoded, cut_windows, decode, load_windows  # noqa: E402
from model_store.pipelines.action import action_feeds, read_actions  # noqa: E402
from model_store.pipelines.avsync import avsync_feeds, source_heatmaps, sync_score  # noqa: E402
from model_store.pipelines.separation import separated_tracks, separation_feeds  # noqa: E402
from model_store.registry import ModelStore  # noqa: E402
from model_store.runtime import LoadedModel, load_model  # noqa: E402

log = logging.getLogger("serve_overhead")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ROUTES = {"actions": "/v1/actions", "localization": "/v1/localization?format=json&refine=true",
          "separations": "/v1/separations", "analyze": "/v1/analyze"}


class InProcess:
    """The shipped models opened as the service opens them; one function per route doing its decode + inference."""

    def __init__(self, settings: Settings) -> None:
        store = ModelStore(settings.model_root)
        warmup = sorted({1, settings.max_batch})
        self.models: dict[str, LoadedModel] = {
            task: load_model(store, task, settings.model_alias, settings.providers, settings.intra_op_threads,
                             warmup, settings.intra_op_spinning)
            for task in ("action", "avsync", "separation")}
        self.batch = settings.max_batch
        # a decode that runs alone in the service gets the setting, or (0) every core
        self.threads = settings.decode_threads or _cores()

    def _run(self, task: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self.models[task]
        n = len(next(iter(feeds.values())))
        parts = [model.run({k: v[i:i + self.batch] for k, v in feeds.items()}) for i in range(0, n, self.batch)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _windows(self, path: Path, task: str):
        return load_windows(path, self.models[task].manifest.clip, threads=self.threads)

    def action(self, path: Path, windows=None):
        clip = self.models["action"].manifest.clip
        windows = windows if windows is not None else self._windows(path, "action")
        names = {s.name for s in self.models["action"].manifest.inputs}
        outputs = self._run("action", action_feeds(windows, clip, names))
        return read_actions(outputs["logits"], windows, clip)

    def localization(self, path: Path, windows=None):
        manifest = self.models["avsync"].manifest
        windows = windows if windows is not None else self._windows(path, "avsync")
        outputs = self._run("avsync", avsync_feeds(windows, manifest.clip))
        return sync_score(outputs["sync_logit"]), source_heatmaps(outputs["cam"], windows, manifest.clip,
                                                                  manifest.heatmap)

    def separation(self, path: Path, windows=None):
        clip = self.models["separation"].manifest.clip
        windows = windows if windows is not None else self._windows(path, "separation")
        outputs = self._run("separation", separation_feeds(windows, clip))
        return separated_tracks(outputs, windows, clip)

    def analyze(self, path: Path):
        decoded: dict[tuple, Decoded] = {}
        answers = []
        for task, fn in (("action", self.action), ("avsync", self.localization), ("separation", self.separation)):
            c = self.models[task].manifest.clip
            key = (c.fps, c.height, c.width, c.sample_rate)  # decoded once per distinct spec, as the service does
            if key not in decoded:
                decoded[key] = decode(path, c, threads=self.threads)
            answers.append(fn(path, cut_windows(decoded[key], c)))
        return answers

    def route(self, name: str) -> Callable[[Path], object]:
        return {"actions": self.action, "localization": self.localization, "separations": self.separation,
                "analyze": self.analyze}[name]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="length of the generated video")
    p.add_argument("--size", default="320x180@24", help="WxH@fps of the generated video")
    p.add_argument("--video", type=Path, help="measure this file instead of a generated one")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--routes", nargs="+", default=list(ROUTES), choices=list(ROUTES))
    p.add_argument("--env", nargs="*", default=[], help="server settings, KEY=VALUE (the reference reads them too)")
    p.add_argument("--out", type=Path, default=RESULTS / "serve_overhead.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    env = {"AVSCENE_PROVIDERS": "CPUExecutionProvider", **dict(kv.split("=", 1) for kv in args.env)}
    os.environ.update(env)  # the reference opens its sessions with the server's settings
    settings = Settings()

    with tempfile.TemporaryDirectory(prefix="serve-overhead-") as tmp:
        env.setdefault("AVSCENE_RESULTS_DIR", str(Path(tmp) / "results"))
        env.setdefault("AVSCENE_ASYNC_THRESHOLD_S", str(max(60.0, args.seconds + 1)))  # answered at once
        if args.video:
            path = args.video
        else:
            width, height, fps = parse_size(args.size)
            path = write_video(Path(tmp) / "video.mp4", args.seconds, width, height, fps)
        body = path.read_bytes()
        local = InProcess(settings)
        server = Server(env, Path(tmp) / "server.log")
        times: dict[str, list[tuple[float, float]]] = {r: [] for r in args.routes}
        sizes: dict[str, int] = {}
        try:
            with httpx.Client(base_url=server.base, timeout=600) as http:
                def post(route: str) -> float:
                    t0 = time.perf_counter()
                    r = http.post(ROUTES[route], files={"file": ("video.mp4", body, "video/mp4")})
                    elapsed = time.perf_counter() - t0
                    if r.status_code not in (200, 201):
                        raise SystemExit(f"{route}: {r.status_code} {r.text[:500]}")
                    sizes[route] = len(r.content)
                    return elapsed

                def inproc(route: str) -> float:
                    t0 = time.perf_counter()
                    local.route(route)(path)
                    return time.perf_counter() - t0

                for route in args.routes:  # warm both: page cache, arenas, the server's first-request paths
                    post(route)
                    inproc(route)
                for i in range(args.rounds):
                    for route in args.routes:
                        # alternate which goes first, so neither always follows the other's cache state
                        if i % 2 == 0:
                            service_s = post(route)
                            local_s = inproc(route)
                        else:
                            local_s = inproc(route)
                            service_s = post(route)
                        times[route].append((service_s, local_s))
        finally:
            server.stop()
    rows = []
    for route, ts in times.items():
        service_s, local_s = float(np.median([s for s, _ in ts])), float(np.median([w for _, w in ts]))
        ratio = float(np.median([s / w for s, w in ts]))
        rows.append({"route": route, "path": ROUTES[route], "service_s": service_s, "in_process_s": local_s,
                     "ratio": ratio, "answer_bytes": sizes.get(route), "rounds_s": ts})
        log.info("%s: service %.1f ms, in-process %.1f ms, ratio %.3f", route, service_s * 1e3, local_s * 1e3, ratio)
    result = {"video": {"path": str(args.video) if args.video else None, "size": args.size,
                        "seconds": args.seconds, "bytes": len(body)},
              "rounds": args.rounds, "env": env, "decode_threads": local.threads, "rows": rows,
              "cpu_count": os.cpu_count(), "platform": platform.platform()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| route | service | in-process decode + inference | ratio | answer |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| `POST {r['path']}` | {r['service_s'] * 1e3:.0f} ms | {r['in_process_s'] * 1e3:.0f} ms | "
                     f"{r['ratio']:.2f}x | {(r['answer_bytes'] or 0) / 1024:.0f} KiB |")
    table = "\n".join(lines) + "\n"
    what = str(args.video) if args.video else f"{args.size}, {args.seconds:g} s"
    write_report(args.out, "serve_overhead.py", argv,
                 f"Video {what} ({len(body)} bytes), {args.rounds} rounds, decode threads {local.threads}.\n\n{table}")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
