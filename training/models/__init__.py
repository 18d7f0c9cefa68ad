"""Model registry: names map to (model class, frozen config); duplicates are refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from model_store.manifest import ClipSpec, StftSpec

_REGISTRY: dict[str, tuple[type[nn.Module], Any]] = {}


def register_model(name: str, cls: type[nn.Module], config: Any) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = (cls, config)


def list_models(prefix: str = "") -> list[str]:
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if n.startswith(prefix))


def model_config(name: str, **overrides: Any) -> Any:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return dataclasses.replace(_REGISTRY[name][1], **overrides)


def create_model(name: str, **overrides: Any) -> nn.Module:
    config = model_config(name, **overrides)
    return _REGISTRY[name][0](config)


def build_from_config(name: str, config_dict: dict[str, Any]) -> nn.Module:
    """Rebuild a model from a checkpoint's recorded name and config."""
    _ensure_loaded()
    cls, default = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(default)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config_dict.items() if k in fields}
    return cls(type(default)(**kwargs))


def clip_spec_for(name: str, hop_s: float | None = None, stft: bool = False) -> ClipSpec:
    """The clip spec a registered model is trained and served with: its fps, frames, square size, sample rate and
    window samples; ``hop_s`` the sliding-window hop; with ``stft``, the STFT parameters its graph uses."""
    cfg = model_config(name)
    return ClipSpec(fps=cfg.fps, frames=cfg.frames, height=cfg.size, width=cfg.size, sample_rate=cfg.sample_rate,
                    audio_samples=cfg.audio_samples, hop_s=hop_s,
                    stft=StftSpec(n_fft=cfg.n_fft, hop_length=cfg.hop, win_length=cfg.n_fft) if stft else None)


_loaders: list[Callable[[], None]] = []


def _ensure_loaded() -> None:
    from training.models import (
        action,  # noqa: F401  (registers its variants)
        avsync,  # noqa: F401
        separation,  # noqa: F401
    )
