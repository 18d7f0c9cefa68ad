"""The FastAPI application: ``uvicorn app.main:app``. Models load in the lifespan, never at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import admission
from app.errors import InternalErrorMiddleware, install_error_handlers
from app.limits import UploadLimitMiddleware
from app.metrics import MetricsMiddleware, RequestMetrics
from app.routers import actions, analyze, health, jobs, localization, metrics, models, separations
from app.service import ServiceState
from app.settings import Settings

log = logging.getLogger(__name__)

# one router per resource; /v1/localization and /v1/separations join here
ROUTERS = (health.router, metrics.router, models.router, actions.router, localization.router, separations.router,
           analyze.router, jobs.router)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await service.start()
        except BaseException:
            log.exception("startup failed; the service will not serve")
            await service.stop()
            raise
        log.info("ready: %s", ", ".join(f"{t} v{m.manifest.version}" for t, m in service.models.items()))
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="avscene",
        version="1",
        summary="Audio-visual scene analysis: actions, sound-source localization, on/off-screen separation.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(InternalErrorMiddleware)  # innermost: a 500 that keeps the connection
    assert service.upload_bytes is not None
    # upload bytes held, deadlines, disconnects; 503 + Retry-After
    admission.install(app, service.upload_bytes, settings.request_deadline_s or None, service.retry_after_s,
                      service.stopped, service.precheck)
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.state.request_metrics = RequestMetrics()
    app.add_middleware(MetricsMiddleware, metrics=app.state.request_metrics)  # outermost: sees 413s too
    for router in ROUTERS:
        app.include_router(router)
    return app


app = create_app()
