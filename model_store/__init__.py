"""The contract between training and serving: manifests, the on-disk registry, media decoding, ORT sessions."""

from pathlib import Path

DEFAULT_ROOT = Path(__file__).resolve().parent / "models"
