"""Score a published separation model through :mod:`model_store`, the service's own path: decode the video
into the clip spec's sliding windows, run the ONNX session, overlap-add the windows into whole tracks, and
compare them with the clean tracks of the dataset (``on_screen``/``off_screen`` columns of index.csv).

Metrics (dB, means over clips): ``si_sdri_on``/``si_sdri_off``: SI-SDR of the estimate minus SI-SDR of the
mixture, against the clean on-screen / off-screen track; ``sdr_on``/``sdr_off``: BSS-eval SDR
(``fast_bss_eval.bss_eval_sources``, 512-tap filters, both sources at once, no permutation search). For a
permutation-invariant model (manifest ``training.pit``) each clip takes the better of the two output orders (an
oracle assignment that favours the audio-only baseline). ``by_variant`` breaks the metrics down by the
index's ``variant`` column.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from model_store.dsp import Box
from model_store.media import load_windows
from model_store.pipelines import run_windows
from model_store.pipelines.separation import mixture_track, separated_tracks, separation_feeds
from model_store.runtime import LoadedModel
from training.data.datasets import Record
from training.data.synthav_speech import load_audio

log = logging.getLogger(__name__)

EPS = 1e-8


def si_sdr_np(est: np.ndarray, ref: np.ndarray, eps: float = EPS) -> float:
    """Zero-mean scale-invariant SDR in dB (float64); ``eps`` keeps silent references finite."""
    est = est.astype(np.float64) - est.mean()
    ref = ref.astype(np.float64) - ref.mean()
    target = (est @ ref) / (ref @ ref + eps) * ref
    return float(10 * np.log10((target @ target + eps) / ((est - target) @ (est - target) + eps)))


def separate_file(model: LoadedModel, video: str | Path, batch: int = 16, hide: Box | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mixture, on_screen, off_screen) whole tracks at the model's sample rate, as the service makes them."""
    clip = model.manifest.clip
    windows = load_windows(video, clip)
    (outputs,) = run_windows(model.run, partial(separation_feeds, clip=clip, hide=hide), [windows], batch)
    tracks = separated_tracks(outputs, windows, clip)
    return mixture_track(windows, clip), tracks["on_screen"], tracks["off_screen"]


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, len(x))] = x[:n]
    return out


def read_variants(root: str | Path) -> list[str]:
    index = Path(root) / "index.csv"
    if not index.is_file():
        return []
    with index.open(newline="") as fh:
        return [row.get("variant") or "" for row in csv.DictReader(fh)]


def score_separation(model: LoadedModel, records: Sequence[Record], variants: Sequence[str] = (),
                     pit: bool | None = None, workers: int = 2, progress: bool = False) -> dict:
    import fast_bss_eval
    import torch

    if any(r.on_screen is None or r.off_screen is None for r in records):
        raise ValueError("separation scoring needs on_screen and off_screen tracks for every clip")
    if pit is None:
        pit = bool(model.manifest.training.get("pit", False))
    sr = model.manifest.clip.sample_rate

    def one(r: Record) -> dict[str, float]:
        mix, on, off = separate_file(model, r.video)
        refs = np.stack([_fit(load_audio(r.on_screen, sr), len(mix)), _fit(load_audio(r.off_screen, sr), len(mix))])
        est = np.stack([on, off])
        straight = si_sdr_np(est[0], refs[0]) + si_sdr_np(est[1], refs[1])
        swapped = si_sdr_np(est[1], refs[0]) + si_sdr_np(est[0], refs[1])
        if pit and swapped > straight:
            est = est[::-1].copy()
        # torch tensors: fast_bss_eval 0.1.4's numpy path trips over numpy 2's linalg.solve broadcasting; where
        # torch's exact solve refuses (a singular system, or deterministic mode), its conjugate-gradient solver
        try:
            sdr, _, _ = fast_bss_eval.bss_eval_sources(torch.from_numpy(refs.astype(np.float64)),
                                                       torch.from_numpy(est.astype(np.float64)),
                                                       compute_permutation=False)
            sdr = sdr.numpy()
        except RuntimeError:
            sdr, _, _ = fast_bss_eval.bss_eval_sources(refs.astype(np.float64), est.astype(np.float64),
                                                       compute_permutation=False, use_cg_iter=20)
        imp_on = si_sdr_np(est[0], refs[0]) - si_sdr_np(mix, refs[0])
        imp_off = si_sdr_np(est[1], refs[1]) - si_sdr_np(mix, refs[1])
        return {
            "si_sdri_on": imp_on,
            "si_sdri_off": imp_off,
            "sdr_on": float(sdr[0]),
            "sdr_off": float(sdr[1]),
            "si_sdr_mix_on": si_sdr_np(mix, refs[0]),
            # the model's on/off order is the better one (PIT models: always, by construction)
            "assign_acc": float(pit or straight >= swapped),
            "beats_mix_both": float(imp_on > 0 and imp_off > 0),
        }

    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(one, records)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(records), desc="separate", unit="clip")
        rows = list(it)
    keys = ["si_sdri_on", "si_sdri_off", "sdr_on", "sdr_off", "si_sdr_mix_on", "assign_acc", "beats_mix_both"]
    result: dict = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    result["n"] = len(rows)
    result["pit_oracle"] = pit
    if variants and len(variants) == len(rows) and any(variants):
        by: dict[str, dict[str, float]] = {}
        for name in sorted(set(variants)):
            sel = [r for r, v in zip(rows, variants, strict=True) if v == name]
            by[name] = {"n": len(sel), **{k: float(np.mean([r[k] for r in sel])) for k in keys if k != "si_sdr_mix_on"}}
        result["by_variant"] = by
    return result


def cli_evaluate(args) -> int:
    """``python -m training evaluate separation --data ...``: prints (and optionally writes) one JSON object."""
    import json

    from model_store.registry import ModelStore
    from model_store.runtime import load_model
    from training.data.datasets import read_records, resolve_data

    version = int(args.version) if args.version and args.version.isdigit() else args.version
    model = load_model(ModelStore(args.root), "separation", version)
    root = resolve_data(args.data, args.cache_dir)
    records = read_records(root)
    result = {"task": "separation", "model": model.manifest.name, "version": model.manifest.version,
              "data": args.data, **score_separation(model, records, read_variants(root), progress=not args.quiet)}
    text = json.dumps(result)
    if args.json and args.json != "-":
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0
