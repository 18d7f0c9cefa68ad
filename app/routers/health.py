"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from app.deps import ServiceDep
from app.schemas import Liveness, ModelRef, Readiness, problem_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Liveness)
async def healthz() -> Liveness:
    """Liveness: 200 while the process serves requests."""
    return Liveness()


@router.get("/readyz", response_model=Readiness, responses=problem_responses(503))
async def readyz(service: ServiceDep) -> Readiness:
    """Readiness: 200 once every configured model is loaded and warmed, else 503."""
    if not service.ready:
        reason = "models are not loaded" if service.models else "no model is loaded"
        raise HTTPException(503, f"not ready: {reason}")
    return Readiness(models=[ModelRef.of(m.manifest) for m in service.models.values()])
