"""Sound-source localization scoring: cIoU, success rate and AUC against SynthAV's boxes, and two baselines.

cIoU follows the localization literature (Senocak et al. 2018):

    cIoU = sum(pred * gt) / (sum(gt) + sum(pred * [gt == 0]))

with ``gt`` the box of the sounding object and ``pred`` the binarised heatmap, both at the model's frame size.
**Binarisation** (fixed for every method): a pixel is predicted as sounding when its value is at least half way
between the frame's minimum and maximum (``BINARISE = 0.5``). With the bilinear upsampling of a CAM of stride 8 this
gives a blob of about one cell radius around a single peak (~5% of the frame), the size of SynthAV's smallest
sounding objects (balls: 2-4% of the frame), and grows with the CAM's support for larger ones (wheels, faces:
8-18%). The threshold is relative, so it does not depend on how a method scales its map.

A clip's cIoU is the mean over its heatmap frames (each CAM time step of the sliding windows that cover the video,
compared with the box at the frame nearest to the step's time). ``ciou_success`` is the share of clips with
cIoU >= 0.5; ``auc`` the area under the success rate over the thresholds 0, 0.05, ..., 1.

Baselines, scored on the very same frames and times:

- ``centre``: an isotropic Gaussian at the frame centre (sigma = ``CENTRE_SIGMA`` of the side; binarised, a disc of
  about 10% of the frame, SynthAV's mean box area);
- ``motion``: the mean absolute frame difference over the frames a heatmap step covers, box-blurred; it lights up
  every moving thing, the silent distractor included.

The model's heatmaps are read as its manifest says (``heatmap``, see ``model_store.heatmaps``), exactly as the
service serves them. When that reading refines the CAM with the frames (the guided filter), the scorer adds three
rows so the refinement's own share is visible: ``cam`` (the CAM as it is) and ``centre_refined`` /
``motion_refined`` (each baseline through the very same refinement, guided by the very same frames).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

import numpy as np

from model_store.heatmaps import Heatmaps, box_blur, frame_times, normalise, refine_guided, step_frames, upsample
from model_store.manifest import ClipSpec, HeatmapSpec
from model_store.media import Windows, load_windows
from model_store.pipelines import run_windows
from model_store.pipelines.avsync import avsync_feeds, source_heatmaps, sync_probabilities
from training.avsync.pairs import PAPER_SHIFT, heldout_pairs, pair_batch
from training.data.datasets import ClipData, Record, load_clips

log = logging.getLogger(__name__)

BINARISE = 0.5
CENTRE_SIGMA = 0.18
THRESHOLDS = np.linspace(0.0, 1.0, 21)


def binarise(maps: np.ndarray, level: float = BINARISE) -> np.ndarray:
    """Per frame: value >= min + level * (max - min). Shape: (..., H, W) -> bool (..., H, W)."""
    lo = maps.min(axis=(-2, -1), keepdims=True)
    hi = maps.max(axis=(-2, -1), keepdims=True)
    return maps >= lo + level * (hi - lo)


def box_mask(box: Sequence[float], height: int, width: int) -> np.ndarray:
    """Pixels whose centres lie in the normalised box (x0, y0, x1, y1). Shape: -> bool (height, width)."""
    x0, y0, x1, y1 = box
    xs = (np.arange(width) + 0.5) / width
    ys = (np.arange(height) + 0.5) / height
    return ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]


def ciou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Consensus IoU of binary maps (H, W)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    denom = gt.sum() + (pred & ~gt).sum()
    return float((pred & gt).sum() / denom) if denom else 0.0


def summarise(cious: Sequence[float]) -> dict[str, float]:
    """``ciou_success`` (share >= 0.5), ``auc`` (success rate over thresholds 0..1), ``mean_ciou``, ``n``."""
    c = np.asarray(cious, dtype=np.float64)
    success = np.array([(c >= t).mean() for t in THRESHOLDS])
    return {"ciou_success": float((c >= 0.5).mean()), "auc": float(np.trapezoid(success, THRESHOLDS)),
            "mean_ciou": float(c.mean()), "n": len(c)}


def boxes_at(boxes: Sequence[Sequence[float]], times_s: np.ndarray) -> np.ndarray:
    """The ground-truth box nearest in time for each of ``times_s``. boxes: per-frame ``[t_s, x0, y0, x1, y1]``."""
    b = np.asarray(boxes, dtype=np.float64)
    idx = np.abs(b[:, 0][None, :] - np.asarray(times_s)[:, None]).argmin(axis=1)
    return b[idx, 1:]


def centre_prior(n: int, height: int, width: int, sigma: float = CENTRE_SIGMA) -> np.ndarray:
    ys = ((np.arange(height) + 0.5) / height - 0.5)[:, None]
    xs = ((np.arange(width) + 0.5) / width - 0.5)[None, :]
    g = np.exp(-(xs**2 + ys**2) / (2 * sigma**2)).astype(np.float32)
    return np.broadcast_to(g, (n, height, width))


def motion_maps(windows: Windows, clip: ClipSpec, steps: int) -> np.ndarray:
    """Frame-difference energy per heatmap step (same frames and times as :func:`source_heatmaps`).

    Shape: -> (F, H, W) at the clip's frame size
    """
    _, owners, ks = frame_times(windows.starts_s, steps, clip.window_s)
    v = windows.video.astype(np.float32).mean(axis=-1)  # (W, T, H, W)
    diff = np.abs(np.diff(v, axis=1, prepend=v[:, :1]))  # (W, T, H, W)
    per = clip.frames / steps
    out = []
    for w, k in zip(owners, ks, strict=True):
        f0, f1 = int(np.floor(k * per)), max(int(np.ceil((k + 1) * per)), int(np.floor(k * per)) + 1)
        out.append(diff[w, max(f0, 1):max(f1, 2)].mean(axis=0))
    return box_blur(np.stack(out), max(1, round(clip.width / 32)))


def score_clip(cam: np.ndarray, windows: Windows, clip: ClipSpec, boxes,
               spec: HeatmapSpec | None = None) -> dict[str, float]:
    """cIoU of each method on one clip. cam: (W, T', h, w) of the clip's sliding windows.

    With a refining ``spec`` (the manifest's ``heatmap``), ``model`` is the refined map that is served, and three
    more rows keep the comparison honest: ``cam`` (the model's CAM as it is), and the two baselines passed through
    the very same refinement (``centre_refined``, ``motion_refined``)."""
    hm: Heatmaps = source_heatmaps(cam, windows, clip, spec)
    gt = np.stack([box_mask(b, clip.height, clip.width) for b in boxes_at(boxes, hm.times_s)])
    maps = {
        "model": upsample(hm.maps, clip.height, clip.width),
        "centre": centre_prior(len(gt), clip.height, clip.width),
        "motion": normalise(motion_maps(windows, clip, cam.shape[1])),
    }
    if spec is not None:
        maps["cam"] = upsample(source_heatmaps(cam, windows, clip).maps, clip.height, clip.width)
        _, owners, ks = frame_times(windows.starts_s, cam.shape[1], clip.window_s)
        guide = step_frames(windows.video, owners, ks, cam.shape[1])
        for name in ("centre", "motion"):
            refined = refine_guided(maps[name], guide, spec.radius, spec.eps, spec.blur, spec.pool)
            maps[f"{name}_refined"] = upsample(refined, clip.height, clip.width)
    return {name: float(np.mean([ciou(p, g) for p, g in zip(binarise(m), gt, strict=True)]))
            for name, m in maps.items()}


def score_localization(model, records: Sequence[Record], workers: int = 2, progress: bool = False,
                       batch: int = 32) -> dict:
    """Localization of a published avsync model (``model_store.runtime.LoadedModel``) and the two baselines on
    records with boxes, its heatmaps read as its manifest says (``heatmap``): the model's numbers at the top level,
    the other rows of :func:`score_clip` under ``baselines``."""
    from concurrent.futures import ThreadPoolExecutor

    clip = model.manifest.clip
    records = [r for r in records if r.boxes]
    if not records:
        raise ValueError("no record has boxes of the sounding object; localization needs them")
    per_method: dict[str, list[float]] = {}
    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(lambda r: load_windows(r.video, clip), records)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(records), desc="localization", unit="clip")
        for windows, record in zip(it, records, strict=True):
            (outputs,) = run_windows(model.run, partial(avsync_feeds, clip=clip), [windows], batch)
            scores = score_clip(outputs["cam"], windows, clip, record.boxes, model.manifest.heatmap)
            for name, value in scores.items():
                per_method.setdefault(name, []).append(value)
    result = summarise(per_method.pop("model"))
    result["baselines"] = {name: summarise(values) for name, values in per_method.items()}
    return result


# ------------------------------------------------------------------------------------------------ alignment


def score_alignment(model, clips: Sequence[ClipData], shifts: tuple[float, float], batch: int = 32
                    ) -> dict[str, float]:
    """Alignment accuracy of a published model (a :class:`model_store.runtime.LoadedModel`) on the fixed pairs."""
    clip = model.manifest.clip
    pairs = heldout_pairs(clips, clip, shifts)
    correct, n = 0, 0
    for s in range(0, len(pairs), batch):
        v, a, y = pair_batch(clips, clip, pairs[s:s + batch])
        logit = model.run({"video": np.concatenate([v, v]), "audio": a})["sync_logit"]
        correct += int(((sync_probabilities(logit) > 0.5) == (y > 0.5)).sum())
        n += len(y)
    return {"accuracy": correct / n, "n": n, "n_clips": len(pairs)}


def eval_shifts(manifest) -> tuple[float, float]:
    """The shift range a published model was trained with (the paper's, scaled to its window, if unrecorded)."""
    shifts = manifest.training.get("shift_s")
    if shifts:
        return float(shifts[0]), float(shifts[1])
    return PAPER_SHIFT[0] * manifest.clip.window_s, PAPER_SHIFT[1] * manifest.clip.window_s


def load_eval_clips(records, clip: ClipSpec, workers: int = 2, progress: bool = False) -> list[ClipData]:
    """Decode evaluation records with the service's decoder (no cache)."""
    labels = sorted({r.label for r in records if r.label is not None})
    return load_clips(records, clip, labels, workers=workers, progress=progress)
