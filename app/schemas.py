"""Request and response schemas, named by role."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from model_store.manifest import ClipSpec, HeatmapSpec, Manifest, TensorSpec
from model_store.runtime import LoadedModel


class Problem(BaseModel):
    """An error (RFC 9457 problem details), sent as ``application/problem+json``."""

    type: str = Field(examples=["urn:avscene:problem:media"])
    title: str
    status: int
    detail: str


class ModelRef(BaseModel):
    """The model that produced a response."""

    task: str
    name: str
    version: int

    @classmethod
    def of(cls, manifest: Manifest) -> ModelRef:
        return cls(task=manifest.task, name=manifest.name, version=manifest.version)


class LabelScore(BaseModel):
    label: str
    score: float = Field(ge=0, le=1, description="softmax probability; a multi-label model's: the class's own sigmoid "
                                                 "score (scores need not sum to 1)")


class ActionSegment(BaseModel):
    start_s: float
    end_s: float
    top_k: list[LabelScore]


class ActionResponse(BaseModel):
    """Actions in a video: overall (mean of the windows' probabilities) and per window."""

    model: ModelRef
    duration_s: float
    has_audio: bool
    top_k: list[LabelScore]
    segments: list[ActionSegment]


class Grid(BaseModel):
    height: int
    width: int


class Peak(BaseModel):
    x: float = Field(ge=0, le=1, description="normalised image coordinate, 0 = left edge")
    y: float = Field(ge=0, le=1, description="normalised image coordinate, 0 = top edge")


class HeatmapFrame(BaseModel):
    t_s: float = Field(description="the time this heatmap stands for (centre of its span)")
    heatmap: list[list[float]] = Field(description="grid.height rows of grid.width values in [0, 1]")
    peak: Peak


class LocalizationResponse(BaseModel):
    """Where the sound comes from: the sync network's class activation map over the whole video.

    Heatmaps are normalised over the whole video, so quiet moments look cooler than loud ones.
    """

    model: ModelRef
    duration_s: float
    has_audio: bool
    sync_score: float = Field(ge=0, le=1, description="mean probability that the audio is in sync with the frames")
    grid: Grid
    frames: list[HeatmapFrame]


class ModelInfo(BaseModel):
    """A loaded model: what it is, how to feed it, how well it did when published."""

    task: str
    name: str
    version: int
    created: datetime
    providers: list[str]
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str]
    multi_label: bool = Field(default=False, description="action: scores are per-class sigmoids (a clip may carry "
                                                         "several labels), not one softmax")
    clip: ClipSpec
    heatmap: HeatmapSpec | None = Field(default=None, description="avsync: how the CAM is read as heatmaps")
    metrics: dict[str, float]
    metrics_data: str

    @classmethod
    def of(cls, model: LoadedModel) -> ModelInfo:
        m = model.manifest
        return cls(task=m.task, name=m.name, version=m.version, created=m.created, providers=model.providers,
                   opset=m.opset, inputs=m.inputs, outputs=m.outputs, labels=m.labels, multi_label=m.multi_label,
                   clip=m.clip, heatmap=m.heatmap, metrics=m.metrics, metrics_data=m.metrics_data)


class ModelList(BaseModel):
    models: list[ModelInfo]


class Liveness(BaseModel):
    status: Literal["alive"] = "alive"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    models: list[ModelRef]


def problem_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses=`` entries for problem+json errors."""
    return {s: {"model": Problem, "content": {"application/problem+json": {}}} for s in statuses}


class SeparationTracks(BaseModel):
    """Download URLs of the two tracks (``.wav``; the same path with ``.flac`` gives FLAC)."""

    on_screen: str
    off_screen: str


class SeparationJob(BaseModel):
    """A separation result: what the visible sources say and what is heard from off screen, kept until
    ``expires_at``."""

    id: str
    model: ModelRef
    sample_rate: int
    duration_s: float
    samples: int = Field(description="samples per track: round(duration_s * sample_rate)")
    has_audio: bool
    hide: list[float] | None = Field(default=None, description="the blanked box x0, y0, x1, y1 (normalised)")
    tracks: SeparationTracks
    formats: list[str] = ["wav", "flac"]
    created_at: datetime
    expires_at: datetime


class JobStatus(BaseModel):
    """A long request run as a job: poll it at ``location``; ``result`` holds the answer once ``status`` is
    ``done`` (for ``analyze`` an :class:`AnalyzeResponse`, for ``separation`` a :class:`SeparationJob`)."""

    id: str
    kind: Literal["analyze", "separation"]
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float = Field(ge=0, le=1, description="share of the work done (decoding, then each analysis)")
    location: str = Field(description="where to poll this job (GET) or cancel it (DELETE)")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    detail: str | None = Field(default=None, description="why it failed or was cancelled")
    result: dict | None = None


class AnalyzeResponse(BaseModel):
    """Every loaded analysis of one upload, decoded once per distinct clip spec: what happens (``actions``), where
    the sound comes from (``localization``), what is heard on and off screen (``separation``). An analysis whose
    model is not loaded is null."""

    duration_s: float
    has_audio: bool
    actions: ActionResponse | None = None
    localization: LocalizationResponse | None = None
    separation: SeparationJob | None = None
