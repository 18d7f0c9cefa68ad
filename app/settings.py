"""Service settings, read from ``AVSCENE_*`` environment variables (or passed to ``create_app``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import Request
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model_store import DEFAULT_ROOT
from model_store.manifest import TASKS
from model_store.runtime import DEFAULT_PROVIDERS

MIB = 1 << 20


def _split_list(value: Any) -> Any:
    """Environment lists may be JSON (``["a","b"]``) or comma-separated (``a,b``)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AVSCENE_", extra="ignore")

    model_root: Path = DEFAULT_ROOT
    model_alias: str = Field(default="production", description="alias or version number served per task")
    providers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_PROVIDERS))
    intra_op_threads: int = Field(default=0, ge=0, description="ORT intra-op threads per model run; 0 lets ORT "
                                  "choose (one per physical core)")
    intra_op_spinning: bool = Field(default=False, description="ORT's intra-op threads busy-wait for work (ORT's "
                                    "default; off here: under concurrent load it takes the cores decoders need)")
    max_upload_mb: float = Field(default=200.0, gt=0, description="largest request body, in MiB")
    max_duration_s: float = Field(default=600.0, gt=0)
    max_pixels: int = Field(default=3840 * 2160, gt=0, description="largest accepted frame (width x height)")
    max_batch: int = Field(default=16, ge=1, description="most windows one ONNX run takes")
    batch_timeout_ms: float | None = Field(default=None, ge=0, description="how long a batch waits for more "
                                           "windows; default: 5 ms for a model on a GPU, 0 on CPU (where one window "
                                           "costs as much in a batch as alone: benchmarks/serve_batching.py), so that "
                                           "a request alone never waits; windows already queued join a batch anyway")
    max_concurrent_decodes: int = Field(default=2, ge=1)
    decode_processes: bool = Field(default=True, description="decodes run in MAX_CONCURRENT_DECODES worker "
                                   "processes (PyAV holds the GIL through much of a decode, so decodes in threads of "
                                   "the server wait on each other and on the event loop); false: in its threads")
    decode_threads: int = Field(default=0, ge=0, description="FFmpeg video decoder threads per decode; 0: one for "
                                "frames up to 200x200, else as many as the cores divided among the decodes running "
                                "when it starts (all of them for a decode that runs alone, one each when as many "
                                "decodes run as there are cores)")
    # admission control (app/admission.py): beyond these bounds the answer is an immediate 503 with Retry-After
    max_windows_in_flight: int = Field(default=320, ge=1, description="per model: windows admitted (decoding, "
                                       "queued or in inference); one larger request is admitted when the model is idle")
    max_requests_in_flight: int = Field(default=3, ge=1, description="per model: requests admitted at once")
    max_upload_held_mb: float = Field(default=1024.0, gt=0, description="request bodies held at once, in MiB")
    async_threshold_s: float = Field(default=60.0, ge=0, description="POST /v1/separations and /v1/analyze "
                                     "answer 202 with a job for videos longer than this (or asked to: "
                                     "Prefer: respond-async)")
    max_jobs: int = Field(default=16, ge=1, description="jobs queued or running at once; more are refused with 503")
    job_workers: int = Field(default=1, ge=1, description="jobs run at once")
    request_deadline_s: float = Field(default=120.0, ge=0, description="a request still working after this long "
                                      "is stopped and answered 503; 0: no deadline")
    results_dir: Path = Field(default=Path(tempfile.gettempdir()) / "avscene-results",
                              description="where separation tracks are kept until they expire")
    results_ttl_s: float = Field(default=3600.0, gt=0, description="how long separation results are kept")
    results_sweep_s: float = Field(default=60.0, gt=0, description="how often expired results are removed")
    tasks: Annotated[list[str] | None, NoDecode] = Field(
        default=None, description="tasks to load; default: every task published in the store"
    )

    @field_validator("providers", "tasks", mode="before")
    @classmethod
    def _lists_from_env(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; tasks are {list(TASKS)}")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _uploads_fit(self) -> Settings:
        if self.max_upload_held_mb < self.max_upload_mb:
            raise ValueError(f"max_upload_held_mb ({self.max_upload_held_mb:g}) must be at least max_upload_mb "
                             f"({self.max_upload_mb:g}), or the largest accepted upload could never be admitted")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)

    @property
    def max_upload_held_bytes(self) -> int:
        return int(self.max_upload_held_mb * MIB)


def get_settings(request: Request) -> Settings:
    """The settings of the app serving this request (dependency)."""
    return request.app.state.settings
