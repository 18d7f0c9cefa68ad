"""``/metrics``: Prometheus scrape endpoint."""

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from app.deps import ServiceDep
from app.metrics import render

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request, service: ServiceDep) -> PlainTextResponse:
    """Prometheus metrics: requests by route and status, latency, models, micro-batcher counters."""
    text = render(request.app.state.request_metrics, service)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
