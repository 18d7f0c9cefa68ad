"""Shared dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.service import ServiceState
from app.settings import Settings, get_settings


def get_service(request: Request) -> ServiceState:
    """The running service's state (dependency)."""
    return request.app.state.service


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[ServiceState, Depends(get_service)]
