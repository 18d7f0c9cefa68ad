"""What the noisy-label methods ask of their training clips, whether decoded into RAM
(:class:`~training.action.noisy.arrays.ArraySet`) or streamed from a manifest
(:class:`~training.action.noisy.stream.StreamedClips`): one interface, so that every method is one code path.

Per step a method draws the *global* batch's clip indices from its own generator (the same on every rank) and asks
:meth:`ClipSource.batch` for this rank's share of their windows; per-sample state (loss histories, pair weights,
corrected targets) is looked up by the rows a :class:`Part` says its windows came from. Per epoch, NTL embeds every
clip (:meth:`ClipSource.middle_windows`): an in-RAM set on rank 0, a streamed set split over the ranks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from model_store.manifest import ClipSpec

if TYPE_CHECKING:
    from training.engine import Run


@dataclass
class Part:
    """This rank's share of a global batch of training windows."""

    idx: np.ndarray  # (b,) the clips its windows came from: the batch's own, or replacements for files that failed
    video: torch.Tensor  # (b, 3, T, H, W) float, normalised
    audio: torch.Tensor  # (b, S)
    silent: np.ndarray  # (b,) bool: the window carries no sound (its audio came from a clip without a sound track)
    rows: np.ndarray  # (B,) the whole global batch's clips after replacements (every rank's, in rank order)
    logs: dict[str, float] = field(default_factory=dict)  # per-step scalars for metrics.csv (streamed: ``skipped``)


class ClipSource(Protocol):
    """Clips of one noisy training (or validation) set.

    - ``labels`` (N,) int64: the given (possibly noisy) labels; ``audible`` (N,) bool: whether clip i's audio (its
      own, or another clip's under correspondence noise) has a sound track at all. A pair without sound is never
      treated as corresponding (NTL gives it pair weight 0 in phase 1; in phase 2 it is a video-only sample).
    - ``sharded``: whether :meth:`middle_windows` gives each rank its own share (streamed) or rank 0 everything
      (in RAM, where embedding is cheap next to gathering).
    """

    spec: ClipSpec
    labels: np.ndarray
    audible: np.ndarray
    sharded: bool

    def __len__(self) -> int: ...

    def with_noise(self, labels: np.ndarray, audio_source: np.ndarray) -> ClipSource:
        """The same clips with ``labels``; clip i carries the audio of clip ``audio_source[i]``."""

    def start_epoch(self, key: int, batches: Sequence[np.ndarray], start: int, run: Run) -> None:
        """The global batches of the run's epoch ``key`` that :meth:`batch` will be asked for, from ``start`` on (a
        streamed set starts decoding this rank's shares ahead)."""

    def end_epoch(self) -> None:
        """No more batches of this epoch (a streamed set ends its decoding workers)."""

    def batch(self, idx: np.ndarray, rng: np.random.Generator, run: Run) -> Part:
        """This rank's share of the global batch ``idx``: a random window of each clip. An in-RAM set draws the
        window starts from ``rng``; a streamed one from ``[seed, epoch, index, attempt]``."""

    def middle_windows(self, run: Run, batch: int) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """``(clip indices, video (b, 3, T, H, W), audio (b, S))`` of each clip's middle window, on ``run.device``,
        in blocks of ``batch``: every clip on rank 0 (``sharded`` False) or this rank's contiguous share."""

    def accuracy(self, model: torch.nn.Module, run: Run, zero: str | None = None) -> float:
        """The share of clips whose mean window softmax (the service's sliding windows) picks their label; ``zero``
        feeds zeros for one modality. A streamed set splits the clips over the ranks: call it on every rank."""

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the source (a streamed set's failure counts); {} for none."""

    def load_state(self, d: dict[str, Any]) -> None: ...
