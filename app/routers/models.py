"""``/v1/models``: the models this service loaded."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from app.deps import ServiceDep
from app.schemas import ModelInfo, ModelList, problem_responses

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(service: ServiceDep) -> ModelList:
    """List the loaded models with their versions, labels, clip specs and metrics."""
    return ModelList(models=[ModelInfo.of(m) for m in service.models.values()])


@router.get("/{task}", response_model=ModelInfo, responses=problem_responses(404))
async def get_model(task: str, service: ServiceDep) -> ModelInfo:
    """Describe the model loaded for one task."""
    model = service.models.get(task)
    if model is None:
        loaded = ", ".join(service.models) or "none"
        raise HTTPException(404, f"no model is loaded for task {task!r} (loaded: {loaded})")
    return ModelInfo.of(model)
