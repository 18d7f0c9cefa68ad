"""Model manifests: everything a consumer needs to feed a published ONNX graph and read its outputs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Task = Literal["avsync", "action", "separation"]
TASKS: tuple[str, ...] = ("avsync", "action", "separation")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One graph input or output; symbolic dims are strings (e.g. ``"batch"``)."""

    name: str
    dtype: str
    shape: list[int | str]


class StftSpec(_Strict):
    n_fft: int
    hop_length: int
    win_length: int


class ClipSpec(_Strict):
    """What one model window is: frames at ``fps``, resized to ``height`` x ``width``, and mono audio.

    The window covers ``frames / fps`` seconds; ``audio_samples`` must equal that span at ``sample_rate``.
    Pixels are fed as float32 ``(x / 255 - mean) / std`` per RGB channel, layout (3, T, H, W).
    """

    fps: float = Field(gt=0)
    frames: int = Field(gt=0)
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    pixel_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pixel_std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    sample_rate: int = Field(gt=0)
    audio_samples: int = Field(gt=0)
    hop_s: float | None = Field(default=None, gt=0, description="sliding-window hop; default: window length")
    stft: StftSpec | None = None

    @model_validator(mode="after")
    def _audio_matches_video(self) -> ClipSpec:
        expected = round(self.frames / self.fps * self.sample_rate)
        if abs(self.audio_samples - expected) > 1:
            raise ValueError(
                f"audio_samples={self.audio_samples} does not span the video window "
                f"({self.frames} frames at {self.fps} fps = {expected} samples at {self.sample_rate} Hz)"
            )
        return self

    @property
    def window_s(self) -> float:
        return self.frames / self.fps

    @property
    def window_hop_s(self) -> float:
        return self.hop_s if self.hop_s is not None else self.window_s


class HeatmapSpec(_Strict):
    """How an ``avsync`` model's CAM is read as the heatmaps that are served and scored (``model_store.heatmaps``).

    A manifest without one serves the CAM itself (T' x h x w per window). ``refine="guided"``: each CAM step is
    upsampled to the model's frame size and passed through a colour guided filter (He et al., 2010) whose guide is
    the frame at the step's time, then box-blurred: the same evidence, drawn along the edges of what is in the
    picture; it is then served (and scored) averaged over ``pool`` x ``pool`` blocks, which keeps the JSON small.
    ``radius`` and ``blur`` are in pixels of the model's frames; ``eps`` regularises the filter (colours in
    [0, 1]).
    """

    refine: Literal["guided"] = "guided"
    radius: int = Field(default=24, ge=1)
    eps: float = Field(default=1e-3, gt=0)
    blur: int = Field(default=3, ge=0)
    pool: int = Field(default=2, ge=1)


class Manifest(_Strict):
    """``manifest.json`` beside every published ``model.onnx``."""

    task: Task
    version: int = Field(ge=1)
    name: str
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    clip: ClipSpec
    labels: list[str] = Field(default_factory=list)
    multi_label: bool = Field(default=False, description="action: a clip may carry several labels; the logits are "
                              "read as per-class sigmoid scores instead of one softmax")
    heatmap: HeatmapSpec | None = Field(default=None, description="avsync: how the CAM is read (None: as it is)")
    metrics: dict[str, float] = Field(default_factory=dict)
    metrics_data: str = Field(default="", description="what the metrics were measured on")
    training: dict[str, Any] = Field(default_factory=dict, description="resolved training config, noise, command")
    versions: dict[str, str] = Field(default_factory=dict, description="software versions at export")

    @model_validator(mode="after")
    def _labels_for_action(self) -> Manifest:
        if self.task == "action" and not self.labels:
            raise ValueError("an action manifest needs its labels")
        if self.multi_label and self.task != "action":
            raise ValueError(f"multi_label is an action model's setting, not a {self.task} model's")
        if self.heatmap is not None and (self.clip.height % self.heatmap.pool or self.clip.width % self.heatmap.pool):
            raise ValueError(f"heatmap pool {self.heatmap.pool} must divide the frame size "
                             f"{self.clip.height} x {self.clip.width}")
        return self

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.task} v{self.version} has no input {name!r}")
