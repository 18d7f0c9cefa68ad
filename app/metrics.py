"""Prometheus metrics: request counts and latencies by route template, plus model and batcher state.

Counters live per app (no process-global registry), so several apps in one process (tests) stay apart.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass
class RequestMetrics:
    count: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    seconds: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    observed: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.count[(method, route, str(status))] += 1
        self.seconds[(method, route)] += seconds
        self.observed[(method, route)] += 1


class MetricsMiddleware:
    """Counts every HTTP request by method, route template (not raw path) and status."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"  # raw paths would explode cardinality
            self.metrics.observe(scope["method"], template, status, time.perf_counter() - start)


def _labels(**kv: object) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in kv.items())
    return "{" + inner + "}"


def render(metrics: RequestMetrics, service) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    lines = [
        "# HELP avscene_requests_total HTTP requests by method, route template and status.",
        "# TYPE avscene_requests_total counter",
    ]
    for (method, route, status), n in sorted(metrics.count.items()):
        lines.append(f"avscene_requests_total{_labels(method=method, route=route, status=status)} {n}")
    lines += ["# HELP avscene_request_seconds Time spent answering HTTP requests.",
              "# TYPE avscene_request_seconds summary"]
    for (method, route), total in sorted(metrics.seconds.items()):
        lab = _labels(method=method, route=route)
        lines.append(f"avscene_request_seconds_sum{lab} {total:.6f}")
        lines.append(f"avscene_request_seconds_count{lab} {metrics.observed[(method, route)]}")
    lines += ["# HELP avscene_ready 1 when every model is loaded and warmed.", "# TYPE avscene_ready gauge",
              f"avscene_ready {int(bool(service.ready))}",
              "# HELP avscene_model_info The model serving each task.", "# TYPE avscene_model_info gauge"]
    for task, model in sorted(service.models.items()):
        m = model.manifest
        provider = model.providers[0] if model.providers else ""
        lines.append(f"avscene_model_info{_labels(task=task, name=m.name, version=m.version, provider=provider)} 1")
    counters = {
        "batches": ("avscene_batches_total", "ONNX Runtime runs made by the micro-batcher."),
        "windows": ("avscene_batch_windows_total", "Windows run through the model."),
        "items": ("avscene_batch_items_total", "Queued request chunks served."),
        "errors": ("avscene_batch_errors_total", "Batches that failed."),
    }
    stats = {task: b.stats.as_dict() for task, b in sorted(service.batchers.items())}
    for key, (name, help_text) in counters.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        lines += [f"{name}{_labels(task=task)} {s[key]}" for task, s in stats.items()]
    budgets = sorted(service.budgets.items())
    for name, attr, kind, help_text in (
        ("avscene_admitted_windows", "windows", "gauge", "Windows admitted per model (decoding, queued, running)."),
        ("avscene_admitted_requests", "requests", "gauge", "Requests admitted per model."),
        ("avscene_admission_refused_total", "refused", "counter", "Requests refused with 503 (model budget full)."),
    ):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{_labels(task=task)} {getattr(b, attr)}" for task, b in budgets]
    uploads = service.upload_bytes
    lines += ["# HELP avscene_upload_bytes_held Request bodies held by requests in flight.",
              "# TYPE avscene_upload_bytes_held gauge", f"avscene_upload_bytes_held {uploads.held if uploads else 0}",
              "# HELP avscene_uploads_refused_total Requests refused with 503 (upload bytes full).",
              "# TYPE avscene_uploads_refused_total counter",
              f"avscene_uploads_refused_total {uploads.refused if uploads else 0}",
              "# HELP avscene_stopped_total Requests stopped early, by reason (deadline, disconnect).",
              "# TYPE avscene_stopped_total counter"]
    lines += [f"avscene_stopped_total{_labels(reason=r)} {service.stopped.get(r, 0)}"
              for r in ("deadline", "disconnect")]
    return "\n".join(lines) + "\n"
