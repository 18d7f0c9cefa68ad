"""On/off-screen separation training: ``python -m training train-separation [CONFIG] [key=value ...]``.

Mixtures are made on the fly from clean sources (demucs/asteroid style): each clip's on-screen voice against
an off-screen voice, which is with probability ``mix.own_off`` the clip's own recorded off-screen voice (so
the ``same_pitch`` and ``two_faces`` variants' hard cases are seen) and otherwise another clip's on-screen
voice, at a random relative level in ``mix.level_db``. Validation uses fixed mixtures (a fixed seed).

Real talking-head collections (``prepare``'s manifests of ``<speaker>/<video>/<clip>.mp4``) have no clean
tracks: there a clip's own soundtrack is its on-screen voice and the off-screen voice is always another
*speaker's* clip (mix-and-separate); give ``data.train`` and ``data.val`` the manifest's two splits
(``MANIFEST.csv#train``, ``MANIFEST.csv#val``), which ``prepare --val-fraction`` makes speaker-disjoint. A manifest
is **streamed** (:mod:`training.separation.stream`, settings ``stream.*``): each mixture's two windows are sought and
decoded in DataLoader workers, clips without audio are never voices, files that fail are replaced and counted, and
validation decodes its ``data.val_windows`` fixed mixtures once. SynthAV sets and dataset directories (with their
clean tracks) are decoded into RAM once (cached as .npz) and a list of them is pooled.

Loss (``loss.*``): the paper's L1 on log-magnitude spectrograms of both outputs (our outputs are masks on the
mixture's STFT, so the "phase term" is the mixture's phase, kept) plus ``loss.sisdr`` times the negative
SI-SDR of both waveforms (dB). ``audio_only`` models are trained permutation-invariantly (PIT): the cheaper
of the two output orders counts, and so are ``assign`` models, whose sync head then puts the outputs in order.
Audio-visual models may mix in a share ``loss.pit_mix`` of that PIT loss, and train their sync backbone's head
on an auxiliary correspondence task (``loss.sync``, and ``loss.sync_est`` on the separated outputs): which voice
belongs to the frames.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from model_store.manifest import ClipSpec
from model_store.media import normalize_video
from training.data.collection import is_manifest, read_manifest
from training.data.datasets import load_clips, read_records, resolve_data, slug
from training.data.streaming import FailureMeter, StreamOptions, find_cache, normalize_frames
from training.engine import Loop, Run, RunOptions, fit_to_best, val_metrics
from training.models import clip_spec_for, create_model, model_config
from training.separation import stream as sep_stream
from training.separation.mixing import AugConfig, MixConfig, mix_voices
from training.utils import load_checkpoint

log = logging.getLogger(__name__)

EPS = 1e-8  # SI-SDR: added to both energies so that silent windows give finite values


@dataclass
class SepDataConfig:
    # a list: the sets pooled (decoded into RAM); a manifest (prepare's MANIFEST.csv[#SPLIT]) alone: streamed
    train: str | list[str] = "synthav:seed=1,n=1000,kind=speech"
    val: str = "synthav:seed=2,n=48,kind=speech"
    cache_dir: str = "data/synthav"
    workers: int = 2  # decoding processes of the in-RAM path
    val_windows: int = 96  # fixed validation mixtures (from a manifest: the only windows of data.val decoded)


@dataclass
class LossConfig:
    logmag: float = 1.0
    sisdr: float = 0.05  # per dB
    # audio-visual models: share of the permutation-invariant loss, the rest in the fixed (on, off) order.
    # Keeps the U-Net separating while the visual features learn which output is on screen; 1.0 is pure PIT.
    pit_mix: float = 0.0
    # audio-visual models: weight of an auxiliary correspondence loss on the backbone's head, binary
    # cross-entropy of "the clean on-screen voice belongs to these frames" (1) and "the off-screen voice does" (0)
    sync: float = 0.0
    # the same correspondence loss on the model's own (detached) separated outputs, matched to the clean tracks
    # by the PIT order: what an ``assign`` model's head is asked at inference
    sync_est: float = 0.0


@dataclass
class SepOptimConfig:
    steps: int = 1500
    batch_size: int = 12
    lr: float = 2e-3
    weight_decay: float = 1e-5
    eval_every: int = 250


@dataclass
class SeparationTrainConfig(RunOptions):
    model: str = "separation_small"
    init_avsync: str = ""  # a pretrained sync-network checkpoint whose weights initialise the backbone
    init_unet: str = ""  # a separation checkpoint (e.g. the audio-only PIT run) whose U-Net initialises this one
    data: SepDataConfig = field(default_factory=SepDataConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: SepOptimConfig = field(default_factory=SepOptimConfig)
    stream: StreamOptions = field(default_factory=StreamOptions)  # when data.train / data.val is a manifest
    window_hop_s: float = 0.75  # sliding-window hop recorded in the clip spec (overlap-add at inference)
    out: str = "runs/separation"


# ------------------------------------------------------------------------------------------- losses


def si_sdr(est: torch.Tensor, ref: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Scale-invariant SDR in dB, zero-mean. Shape: (..., S), (..., S) -> (...)."""
    est = est - est.mean(dim=-1, keepdim=True)
    ref = ref - ref.mean(dim=-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * ref
    noise = est - target
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


def log_mag_l1(model: torch.nn.Module, est_masks: torch.Tensor, mix_re: torch.Tensor, mix_im: torch.Tensor,
               refs: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-output L1 between log-magnitudes. Shape: masks (B, 2, F, N), refs (B, 2, S) -> (B, 2)."""
    mix_mag = torch.sqrt(mix_re * mix_re + mix_im * mix_im + 1e-10)[:, None]  # (B, 1, F, N)
    b = refs.shape[0]
    re, im = model.stft(refs.reshape(b * 2, -1))
    ref_mag = torch.sqrt(re * re + im * im + 1e-10).reshape(b, 2, *re.shape[1:])  # (B, 2, F, N)
    return (torch.log(est_masks * mix_mag + 1e-4) - torch.log(ref_mag + 1e-4)).abs().mean(dim=(2, 3))


def separation_loss(model: torch.nn.Module, video: torch.Tensor, mix: torch.Tensor, refs: torch.Tensor,
                    cfg: LossConfig, pit: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward shared by training and validation: (loss, estimates (B, 2, S))."""
    masks, re, im = model.forward_masks(video, mix)
    on = model.istft(masks[:, 0] * re, masks[:, 0] * im)
    off = model.istft(masks[:, 1] * re, masks[:, 1] * im)
    est = torch.stack([on, off], dim=1)  # (B, 2, S)

    def per_sample(m: torch.Tensor, e: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        total = cfg.logmag * log_mag_l1(model, m, re, im, r).sum(1)
        if cfg.sisdr:
            total = total - cfg.sisdr * si_sdr(e, r).sum(1)
        return total  # (B,)

    loss = per_sample(masks, est, refs)
    if pit or cfg.pit_mix > 0:
        best = torch.minimum(loss, per_sample(masks.flip(1), est.flip(1), refs))
        loss = best if pit else (1.0 - cfg.pit_mix) * loss + cfg.pit_mix * best
    loss = loss.mean()
    if getattr(model, "backbone", None) is None:
        return loss, est
    b = refs.shape[0]
    target = torch.cat([torch.ones(b), torch.zeros(b)]).to(loss)
    if cfg.sync > 0:
        logits = model.pair_sync_logits(video, refs[:, 0], refs[:, 1])  # (2B,)
        loss = loss + cfg.sync * F.binary_cross_entropy_with_logits(logits, target)
    if cfg.sync_est > 0:
        ordered = pit_order(est.detach(), refs)
        logits = model.pair_sync_logits(video, ordered[:, 0], ordered[:, 1])
        loss = loss + cfg.sync_est * F.binary_cross_entropy_with_logits(logits, target)
    return loss, est


def pit_order(est: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """``est`` (B, 2, S) in the output order that matches ``refs`` (B, 2, S) best by summed SI-SDR."""
    keep = si_sdr(est, refs).sum(1) >= si_sdr(est.flip(1), refs).sum(1)
    return torch.where(keep[:, None, None], est, est.flip(1))


# --------------------------------------------------------------------------------------------- data


@dataclass
class SourceSet:
    """Decoded frames and clean tracks of a speech dataset at a model's clip spec."""

    frames: list[np.ndarray]  # each (N, H, W, 3) uint8
    on: list[np.ndarray]  # each (S,) float32
    off: list[np.ndarray | None]  # None: no clean off-screen track (a talking head's clip: its audio is ``on``)
    speakers: list[str] | None = None  # who speaks in each clip, where known: off-screen voices come from others

    def other_speaker(self, i: int, j: int) -> bool:
        return self.speakers is None or self.speakers[i] != self.speakers[j]


def load_sources(spec_str: str, clip: ClipSpec, data: SepDataConfig, progress: bool = False) -> SourceSet:
    """Decode (once; cached as .npz beside the dataset, or in ``data.cache_dir`` for a manifest) frames and the
    clean on/off tracks; a set without clean tracks (talking heads) keeps each clip's own audio as ``on``."""
    from training.data.synthav_speech import load_audio

    root = resolve_data(spec_str, data.cache_dir)
    key = f"sep-{clip.fps:g}fps-{clip.frames}f-{clip.width}px-{clip.sample_rate}hz"
    if Path(root).is_dir():
        cache = Path(root) / f"{key}.npz"
    else:  # a manifest (maybe with #split): its own file in the cache folder
        cache = Path(data.cache_dir) / f"{slug(str(spec_str))}-{key}.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        n = int(z["n"])
        speakers = [str(v) for v in z["speakers"]] if "speakers" in z else None
        return SourceSet([z[f"f{i}"] for i in range(n)], [z[f"on{i}"] for i in range(n)],
                         [z[f"off{i}"] if f"off{i}" in z else None for i in range(n)], speakers)
    records = read_records(root)
    clean = [r.on_screen is not None and r.off_screen is not None for r in records]
    if any(clean) and not all(clean):
        raise ValueError(f"{root}: some clips have clean on/off-screen tracks and some do not")
    clips = load_clips([dataclasses.replace(r, label=None) for r in records], clip, [], workers=data.workers,
                       progress=progress)
    frames = [c.frames for c in clips]
    speakers = None
    if all(clean):
        on = [load_audio(r.on_screen, clip.sample_rate) for r in records]
        off: list[np.ndarray | None] = [load_audio(r.off_screen, clip.sample_rate) for r in records]
    else:  # mix-and-separate: the clip's own audio is on screen; another speaker's clip will be off screen
        on, off = [c.audio for c in clips], [None] * len(clips)
        speakers = [r.speaker or str(Path(r.video).parent) for r in records]
        if len(set(speakers)) < 2:
            raise ValueError(f"{spec_str}: mix-and-separate needs clips of at least two speakers")
    arrays = {"n": np.array(len(records))}
    if speakers is not None:
        arrays["speakers"] = np.array(speakers)
    for i in range(len(records)):
        arrays[f"f{i}"], arrays[f"on{i}"] = frames[i], on[i]
        if off[i] is not None:
            arrays[f"off{i}"] = off[i]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.partial.npz")
    np.savez(tmp, **arrays)
    tmp.rename(cache)
    return SourceSet(frames, on, off, speakers)


def pooled_sources(specs: str | Sequence[str], clip: ClipSpec, data: SepDataConfig, progress: bool = False
                   ) -> SourceSet:
    """One ``SourceSet`` of several datasets' clips (a single spec: that dataset's)."""
    if isinstance(specs, str):
        return load_sources(specs, clip, data, progress)
    sets = [load_sources(s, clip, data, progress) for s in specs]
    speakers = None
    if any(s.speakers is not None for s in sets):  # a set without speakers: each clip its own
        speakers = [f"{k}/{who}" for k, s in enumerate(sets)
                    for who in (s.speakers or [f"clip{i}" for i in range(len(s.on))])]
    return SourceSet([f for s in sets for f in s.frames], [x for s in sets for x in s.on],
                     [x for s in sets for x in s.off], speakers)


def make_batch(src: SourceSet, clip: ClipSpec, mix: MixConfig, rng: np.random.Generator, size: int,
               keep: Sequence[int] | None = None, aug: AugConfig | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """On-the-fly mixtures: (video (B, 3, T, H, W), mixture (B, S), refs (B, 2, S)). ``size`` mixtures are drawn
    from ``rng``; with ``keep`` (this rank's share of a global batch) only those are built. With an active
    ``aug``, each mixture's recording conditions come from a generator seeded by (batch seed, its index)."""
    n_clips, S, T = len(src.frames), clip.audio_samples, clip.frames
    wanted = set(range(size) if keep is None else keep)
    drawn = []
    for k in range(size):
        i = int(rng.integers(n_clips))
        n_frames = len(src.frames[i])
        f0 = int(rng.integers(0, max(1, n_frames - T + 1)))
        a0 = int(round(f0 / clip.fps * clip.sample_rate))
        own = rng.uniform() < mix.own_off and src.off[i] is not None
        j = b0 = 0
        if not own:
            j = int(rng.integers(n_clips - 1))
            j += j >= i
            while not src.other_speaker(i, j):  # (only talking heads: another speaker's voice)
                j = int(rng.integers(n_clips))
            b0 = int(rng.integers(0, max(1, len(src.on[j]) - S + 1)))
        level = rng.uniform(*mix.level_db)
        gain = rng.uniform(*mix.gain)
        if k in wanted:
            drawn.append((k, i, f0, a0, own, j, b0, level, gain))
    # recording conditions: one seed for the batch, drawn after its mixtures (which stay those of no ``aug``)
    batch_seed = int(rng.integers(2**63)) if aug is not None and aug.active else None
    videos, mixes, refs = [], [], []
    for k, i, f0, a0, own, j, b0, level, gain in drawn:
        on = _window(src.on[i], a0, S)
        off = _window(src.off[i], a0, S) if own else _window(src.on[j], b0, S)
        conditions = np.random.default_rng([batch_seed, k]) if batch_seed is not None else None
        mixture, ref = mix_voices(on, off, level, gain, aug, clip.sample_rate, conditions)
        idx = np.minimum(np.arange(f0, f0 + T), len(src.frames[i]) - 1)
        videos.append(normalize_video(src.frames[i][idx], clip))
        mixes.append(mixture)
        refs.append(ref)
    return torch.from_numpy(np.stack(videos)), torch.from_numpy(np.stack(mixes)), torch.from_numpy(np.stack(refs))


def fixed_batches(src: SourceSet, clip: ClipSpec, mix: MixConfig, seed: int, windows: int,
                  aug: AugConfig | None = None, size: int = 16
                  ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A fixed set of ``windows`` mixtures (rounded up to whole batches of ``size``), drawn from ``seed``: the
    in-RAM validation set, and the sets the separation benchmarks score checkpoints on."""
    rng = np.random.default_rng(seed)
    return [make_batch(src, clip, mix, rng, size, aug=aug) for _ in range(math.ceil(windows / size))]


def _window(x: np.ndarray, start: int, length: int) -> np.ndarray:
    out = np.zeros(length, dtype=np.float32)
    chunk = x[start : start + length]
    out[: len(chunk)] = chunk
    return out


# ------------------------------------------------------------------------------------------ loops


@torch.inference_mode()
def evaluate(model, val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], cfg: SeparationTrainConfig,
             device, pit: bool, clip: ClipSpec | None = None) -> dict[str, float]:
    """SI-SDR improvement over the mixture on fixed mixtures. Audio-only models: the better output order (an
    oracle); ``assign`` models: the order their sync head chooses, with ``assign_acc`` the share of windows where
    it matches the better order and ``oracle_si_sdri`` the mean improvement under the better order. uint8 frames
    (streamed mixtures) are normalised on ``device`` with ``clip``."""
    model.eval()
    assign = bool(getattr(model.cfg, "assign", False))
    imp_on, imp_off, losses, agree, oracle = [], [], [], [], []
    for video, mixture, refs in val:
        if video.dtype == torch.uint8:
            video = normalize_frames(video.to(device), clip)
        video, mixture, refs = video.to(device), mixture.to(device), refs.to(device)
        loss, est = separation_loss(model, video, mixture, refs, cfg.loss, pit)
        losses.append(loss.item())
        base = si_sdr(mixture[:, None].expand_as(refs), refs)  # (B, 2)
        if pit:
            best = pit_order(est, refs)
            if assign:
                est = torch.stack(model.assign(video, est[:, 0], est[:, 1]), dim=1)
                agree.append((est == best).all(dim=2).all(dim=1).float())
                oracle.append((si_sdr(best, refs) - base).mean(1))
            else:
                est = best
        imp = si_sdr(est, refs) - base
        imp_on.append(imp[:, 0])
        imp_off.append(imp[:, 1])
    out = {"loss": float(np.mean(losses)), "si_sdri_on": torch.cat(imp_on).mean().item(),
           "si_sdri_off": torch.cat(imp_off).mean().item()}
    if assign:
        out["assign_acc"] = torch.cat(agree).mean().item()
        out["oracle_si_sdri"] = torch.cat(oracle).mean().item()
    return out


def init_backbone(model: torch.nn.Module, checkpoint: str) -> dict[str, int]:
    """Load a sync-network checkpoint into ``model.backbone`` (tensors whose names and shapes match)."""
    ckpt = load_checkpoint(checkpoint)
    state = ckpt.get("state_dict", ckpt)
    own = model.backbone.state_dict()
    prefix = "backbone." if any(k.startswith("backbone.") for k in state) else ""
    matched = {k: v for k, v in ((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))
               if k in own and own[k].shape == v.shape}
    model.backbone.load_state_dict(matched, strict=False)
    log.info("init_avsync: %d of %d backbone tensors loaded from %s", len(matched), len(own), checkpoint)
    return {"loaded": len(matched), "total": len(own)}


def init_unet(model: torch.nn.Module, checkpoint: str) -> dict[str, int]:
    """Copy a separation checkpoint's U-Net (not its backbone) into ``model``, so that the model starts out computing
    exactly what the checkpoint computed:

    - where this model's encoder takes extra (audio-visual) input channels, the old weights fill the first channels
      and the new ones start at zero;
    - where it takes fewer (an audio-only model from an audio-visual checkpoint: the ablation of a stage's recipe),
      it keeps the first (audio) channels' weights; it then computes what the checkpoint computed with its
      audio-visual input at zero, not what it computed;
    - where this U-Net is wider (``widths``; the checkpoint records its own), each old channel keeps its place in
      every part of a layer's input (:meth:`AVUNetSeparator.channel_maps`) and its weights; the new channels keep
      their random initialisation as outputs, and every weight from a new channel into an old one starts at zero,
      so the new channels add nothing until training gives them a use (function-preserving widening).
    """
    ck = load_checkpoint(checkpoint)
    state = ck["state_dict"]
    own = model.state_dict()
    old_widths = tuple((ck.get("model_config") or {}).get("widths") or model.cfg.widths)
    maps = model.channel_maps(old_widths) if old_widths != tuple(model.cfg.widths) else {}
    loaded, widened, narrowed, wider = 0, 0, 0, 0
    for name, value in state.items():
        if name.startswith("backbone.") or name not in own:
            continue
        target = own[name]
        module = name.rsplit(".", 1)[0]
        if target.shape == value.shape and module not in maps:
            own[name] = value
            loaded += 1
        elif module in maps:
            own[name] = _widen(target, value, *maps[module])
            wider += 1
        elif target.ndim == 4 and target.shape[0] == value.shape[0] and target.shape[1] > value.shape[1]:
            wide = torch.zeros_like(target)
            wide[:, : value.shape[1]] = value
            own[name] = wide
            widened += 1
        elif target.ndim == 4 and target.shape[0] == value.shape[0] and target.shape[1] < value.shape[1]:
            own[name] = value[:, : target.shape[1]].clone()
            narrowed += 1
    model.load_state_dict(own)
    log.info("init_unet: %d tensors copied, %d widened with zeros for the audio-visual channels, %d narrowed to the "
             "audio channels, %d into a wider U-Net (%s -> %s), from %s", loaded, widened, narrowed, wider, old_widths,
             tuple(model.cfg.widths), checkpoint)
    return {"loaded": loaded, "widened": widened, "narrowed": narrowed, "wider": wider}


def _widen(target: torch.Tensor, value: torch.Tensor, out_idx: list[int], in_idx: list[int] | None,
           transposed: bool) -> torch.Tensor:
    """``value`` (a narrower layer's tensor) placed into ``target`` (this layer's initialisation) at ``out_idx`` /
    ``in_idx``; the old outputs' weights from new inputs are zero."""
    new = target.clone()
    if value.ndim == 0:  # num_batches_tracked
        return value.clone()
    if value.ndim == 1 or in_idx is None:
        new[out_idx] = value
        return new
    if transposed:
        new, value = new.transpose(0, 1), value.transpose(0, 1)
    rows = torch.zeros_like(new[out_idx])
    rows[:, in_idx] = value
    new[out_idx] = rows
    return new.transpose(0, 1).contiguous() if transposed else new


def train_separation(cfg: SeparationTrainConfig) -> dict[str, Any]:
    """Train for ``optim.steps`` steps, validate every ``eval_every``, keep the best; returns final metrics."""
    run = Run(cfg, "separation")
    device = run.device

    mcfg = model_config(cfg.model)
    pit = bool(mcfg.audio_only or mcfg.assign)  # the separation loss is permutation-invariant
    clip = clip_spec_for(cfg.model, cfg.window_hop_s, stft=True)

    manifest = streamed_manifest(cfg.data.train)
    streaming, val_streamed = manifest is not None, is_manifest(cfg.data.val)
    with run.main_first():  # the in-RAM sets: rank 0 decodes and caches them, the others read its cache
        if not streaming:
            train_src = pooled_sources(cfg.data.train, clip, cfg.data, cfg.progress)
        if not val_streamed:
            val_src = load_sources(cfg.data.val, clip, cfg.data, cfg.progress)
    if streaming:
        train_voices = sep_stream.Voices(read_manifest(manifest))
        train_cache = find_cache(train_voices.table, clip, cfg.stream)
    if val_streamed:  # this rank's share of the fixed mixtures, decoded once (bounded by data.val_windows)
        val_voices = sep_stream.Voices(read_manifest(cfg.data.val, val=True))
        val = sep_stream.val_batches(val_voices, clip, cfg.mix, cfg.aug, cfg.stream, cfg.data.val_windows, run.rank,
                                     run.world_size, cache=find_cache(val_voices.table, clip, cfg.stream))
    else:
        val = fixed_batches(val_src, clip, cfg.mix, 12345, cfg.data.val_windows, aug=cfg.aug)
    if streaming:
        log.info("separation: %d voices of %d speakers streamed from %s, %d process(es)", len(train_voices),
                 train_voices.speakers, manifest, run.world_size)

    model = create_model(cfg.model).to(device)
    init_info = None
    if cfg.init_unet:
        init_info = {"unet": init_unet(model, cfg.init_unet)}
    if cfg.init_avsync:
        if model.backbone is None:
            raise ValueError("init_avsync given for an audio-only model")
        init_info = {**(init_info or {}), "avsync": init_backbone(model, cfg.init_avsync)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.optim.lr, total_steps=cfg.optim.steps,
                                                    pct_start=0.1)

    def forward(m: torch.nn.Module, video: torch.Tensor, mixture: torch.Tensor, refs: torch.Tensor):
        with run.autocast():  # the model's STFT, inverse STFT and the losses stay in fp32 (see models.separation)
            return separation_loss(m, video, mixture, refs, cfg.loss, pit)

    train_step = run.wrap(forward, model)
    rng = np.random.default_rng(cfg.seed)  # the global batch stream, the same on every rank
    meter = FailureMeter(cfg.stream, run.reduce_sums)  # streamed mixtures whose files failed, over all ranks
    st: dict[str, Any] = {"history": [], "best": None, "seconds": 0.0, "round": {"loss": 0.0, "sdr": 0.0, "n": 0}}
    t_round = time.perf_counter()
    stream: dict[str, Any] = {"next": None, "it": None}  # the streamed batches' iterator and the step it yields next

    def streamed_batch(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
        if stream["next"] != i:  # first step, or after a resume: batches from step i on (a pure function of i)
            mine = run.shard(range(cfg.optim.batch_size))
            dataset = sep_stream.MixWindows(train_voices, clip, cfg.mix, cfg.aug, cfg.seed, cfg.stream,
                                            cache=train_cache)
            stream["it"] = iter(sep_stream.mix_loader(dataset, sep_stream.StepMixes(i, cfg.optim.steps, mine),
                                                      cfg.stream, device.type == "cuda", cfg.seed * 100_003 + i))
        frames, mixture, refs, _, _, failures, silent, lost = next(stream["it"])
        stream["next"] = i + 1
        skipped = meter.update(len(lost) - int(lost.sum()), int(failures.sum()), int(lost.sum()))
        video = normalize_frames(frames.to(device, non_blocking=True), clip)  # uint8 over the bus
        return (video, mixture.to(device, non_blocking=True), refs.to(device, non_blocking=True),
                {"skipped": skipped, "silent": float(silent.sum())})

    def one_step(i: int) -> tuple[torch.Tensor, dict[str, float], int]:
        logs: dict[str, float] = {}
        if streaming:
            video, mixture, refs, logs = streamed_batch(i)
        else:
            mine = run.shard(range(cfg.optim.batch_size))
            video, mixture, refs = (x.to(device) for x in make_batch(train_src, clip, cfg.mix, rng,
                                                                     cfg.optim.batch_size, keep=mine, aug=cfg.aug))
        loss, est = train_step(video, mixture, refs)
        with torch.no_grad():
            sdr = si_sdr(est[:, 0].float(), refs[:, 0]).mean().item()
        r = st["round"]
        r["loss"] += loss.item()
        r["sdr"] += sdr
        r["n"] += 1
        return loss, {"loss": loss.item(), "si_sdr_on": sdr, **logs}, len(refs)

    def validate() -> dict[str, float]:
        if not run.distributed:
            return evaluate(model, val, cfg, device, pit, clip)
        # every batch's windows, split (streamed: each rank decoded its share only)
        mine = val if val_streamed else [tuple(x[run.rank::run.world_size] for x in b) for b in val]
        va = evaluate(model, mine, cfg, device, pit, clip)
        n = float(sum(len(b[1]) for b in mine))
        sums = run.reduce_sums({"n": n, **{k: v * n for k, v in va.items()}})
        total = sums.pop("n")
        return {k: v / total for k, v in sums.items()}

    def round_end(_r: int, done: int) -> dict[str, float]:
        nonlocal t_round
        va = validate()
        r = run.reduce_sums(st["round"])
        tr = {"loss": r["loss"] / max(r["n"], 1), "si_sdr_on": r["sdr"] / max(r["n"], 1)}
        seconds = time.perf_counter() - t_round
        st["seconds"] += seconds
        st["round"] = {"loss": 0.0, "sdr": 0.0, "n": 0}
        st["history"].append({"step": done, "train": tr, "val": va, "seconds": seconds})
        log.info("step %d train loss %.3f si-sdr(on) %.2f | val loss %.3f si-sdri on %.2f off %.2f (%.0f s)",
                 done, tr["loss"], tr["si_sdr_on"], va["loss"], va["si_sdri_on"], va["si_sdri_off"], seconds)
        if "assign_acc" in va:
            log.info("step %d sync-head order right in %.1f %% of windows; oracle order si-sdri %.2f", done,
                     100 * va["assign_acc"], va["oracle_si_sdri"])
        score = va["si_sdri_on"] + va["si_sdri_off"]
        if st["best"] is None or score >= st["best"]["score"]:
            st["best"] = {"score": score, **st["history"][-1]}
            run.save("best.pt", run.checkpoint_payload(model, **provenance(),
                                                       metrics={"step": done, **val_metrics(va)}))
        t_round = time.perf_counter()
        return val_metrics(va)

    def provenance() -> dict[str, Any]:
        return {"model": cfg.model, "model_config": dataclasses.asdict(mcfg), "clip": clip.model_dump(),
                "pit": bool(mcfg.audio_only),  # scored with an oracle output order
                "init_avsync": init_info or {}}

    def state() -> dict[str, Any]:
        return {**st, "stream": meter.state()} if streaming else dict(st)

    def load_state(d: dict[str, Any]) -> None:
        st.update({k: v for k, v in d.items() if k != "stream"})
        if "stream" in d:
            meter.load_state(d["stream"])
        stream["next"] = None

    loop = Loop(models=[model], optimizers=[optimizer], schedulers=[scheduler], steps=cfg.optim.steps,
                round_steps=cfg.optim.eval_every, step=one_step, round_end=round_end, state=state,
                load_state=load_state, generators={"batches": rng}, clip_grad=5.0, payload=provenance)
    result = fit_to_best(run, loop, st, at="step")
    if streaming:
        result.update(windows_drawn=meter.windows, windows_skipped=meter.failures)
    return result


def streamed_manifest(train: str | Sequence[str]) -> str | None:
    """The manifest ``data.train`` streams from: a prepared manifest (``MANIFEST.csv[#SPLIT]``) given alone (or as a
    list of one); None for the in-RAM sets. A list that holds a manifest among other sets is refused: the streamed
    and the in-RAM paths do not pool."""
    specs = [train] if isinstance(train, str) else list(train)
    manifests = [str(s) for s in specs if is_manifest(s)]
    if manifests and len(specs) > 1:
        raise ValueError(f"data.train lists {manifests[0]}, a manifest, among {len(specs)} sets: a manifest is "
                         "streamed and trains alone (prepare one manifest of all the collections to pool them)")
    return manifests[0] if manifests else None
