"""On-screen / off-screen source separation (Owens & Efros, ECCV 2018, Sec. 5).

A U-Net over the mixture's log-magnitude spectrogram whose encoder is joined, at several resolutions, by the
audio-visual features of the sync network (:class:`~training.models.avsync.AVSyncNet`): each fused feature
map is averaged over space, resized in time to the U-Net level, tiled over frequency and concatenated. The
decoder predicts two magnitude masks (on screen, off screen) that are applied to the mixture's complex STFT;
the inverse STFT turns them back into waveforms. STFT and inverse STFT are real-valued ops inside the graph
(a DFT as a strided conv, the inverse DFT as a transposed conv with overlap-add), so the exported ONNX graph
takes frames and the mixture waveform and returns the two waveforms.

With ``assign`` the U-Net is trained permutation-invariantly and the two outputs are put in order by the sync
network itself: its head scores each separated track against the frames, and the one that belongs to them is
on screen (the paper's own question, "is this audio in sync with this video?", asked of each output).

Variants (same U-Net, same data): ``audio_only`` (no video: the paper's audio-only baseline, trained with a
permutation-invariant loss) and ``still_frame`` (the backbone sees the middle frame repeated over time).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.models import model_config, register_model
from training.models.avsync import AVSyncConfig, AVSyncNet


@dataclass(frozen=True)
class SeparationConfig:
    # clip spec (the backbone is built with these)
    fps: float = 12.0
    frames: int = 18
    size: int = 64
    sample_rate: int = 8000
    # STFT
    n_fft: int = 256
    hop: int = 128
    # sync-network backbone: a registered AVSyncNet name, rebuilt with the clip spec above
    backbone: str = "avsync_sep_lite"
    av_levels: tuple[int, ...] = (1, 2, 3)  # encoder levels (0 = first) whose input gets backbone features[i]
    # U-Net: one stride-2 conv (+ one 3x3 conv) per level
    widths: tuple[int, ...] = (16, 32, 64, 128)
    audio_only: bool = False
    still_frame: bool = False
    # separate permutation-invariantly, then let the backbone's sync head say which output belongs to the
    # frames (:meth:`AVUNetSeparator.assign`); the ordering is part of the forward pass and the exported graph
    assign: bool = False

    @property
    def audio_samples(self) -> int:
        return round(self.frames / self.fps * self.sample_rate)


def _hann(n: int) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64)
    return 0.5 - 0.5 * torch.cos(2 * math.pi * t / n)  # periodic Hann


class Stft(nn.Module):
    """Centred (zero-padded) STFT as a strided conv with a fixed windowed DFT basis.

    Shape: (B, S) -> re, im (B, n_fft // 2 + 1, 1 + S // hop)
    """

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop, self.n_freqs = n_fft, hop, n_fft // 2 + 1
        t = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(self.n_freqs, dtype=torch.float64)[:, None]
        angle = 2 * math.pi * k * t / n_fft
        w = _hann(n_fft)
        basis = torch.cat([torch.cos(angle) * w, -torch.sin(angle) * w])  # (2F, n_fft)
        self.register_buffer("basis", basis.float()[:, None, :], persistent=False)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.is_autocast_enabled(wave.device.type):  # training in mixed precision: the DFT stays fp32
            with torch.autocast(wave.device.type, enabled=False):
                return self.forward(wave.float())
        x = F.pad(wave[:, None, :], (self.n_fft // 2, self.n_fft // 2))  # (B, 1, S + n_fft)
        spec = F.conv1d(x, self.basis, stride=self.hop)  # (B, 2F, frames)
        return spec[:, : self.n_freqs], spec[:, self.n_freqs :]


class InverseStft(nn.Module):
    """Inverse of :class:`Stft` for a fixed length: inverse DFT times the window as a transposed conv
    (overlap-add), divided by the summed squared window, centre padding cropped.

    Shape: re, im (B, F, frames) -> (B, length)
    """

    def __init__(self, n_fft: int, hop: int, length: int) -> None:
        super().__init__()
        self.n_fft, self.hop, self.length = n_fft, hop, length
        n_freqs = n_fft // 2 + 1
        t = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_freqs, dtype=torch.float64)[:, None]
        angle = 2 * math.pi * k * t / n_fft
        c = torch.full((n_freqs, 1), 2.0, dtype=torch.float64)
        c[0] = 1.0
        if n_fft % 2 == 0:
            c[-1] = 1.0
        w = _hann(n_fft)
        basis = torch.cat([c * torch.cos(angle) * w, -c * torch.sin(angle) * w]) / n_fft  # (2F, n_fft)
        self.register_buffer("basis", basis.float()[:, None, :], persistent=False)
        frames = 1 + length // hop
        total = (frames - 1) * hop + n_fft
        env = torch.zeros(total, dtype=torch.float64)
        for i in range(frames):
            env[i * hop : i * hop + n_fft] += w**2
        env = env[n_fft // 2 : n_fft // 2 + length]
        self.register_buffer("inv_env", (1.0 / env.clamp(min=1e-8)).float(), persistent=False)

    def forward(self, re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(re.device.type):  # training in mixed precision: the inverse DFT stays fp32
            with torch.autocast(re.device.type, enabled=False):
                return self.forward(re.float(), im.float())
        spec = torch.cat([re, im], dim=1)  # (B, 2F, frames)
        wave = F.conv_transpose1d(spec, self.basis, stride=self.hop)[:, 0]  # (B, total)
        half = self.n_fft // 2
        return wave[:, half : half + self.length] * self.inv_env  # (B, length)


def _block(cin: int, cout: int, stride: int, double: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                               nn.LeakyReLU(0.2)]
    if double:
        layers += [nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers)


class AVUNetSeparator(nn.Module):
    """Audio-visual U-Net separator.

    Shape:
        - video: (B, 3, T, H, W) float, normalised per the clip spec (ignored when ``audio_only``)
        - audio: (B, S) mixture waveform, S = ``cfg.audio_samples``
        - output: ``on_screen``, ``off_screen`` waveforms (B, S); their sum is the mixture wherever the two
          masks sum to one
    """

    def __init__(self, cfg: SeparationConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stft = Stft(cfg.n_fft, cfg.hop)
        self.istft = InverseStft(cfg.n_fft, cfg.hop, cfg.audio_samples)
        self.n_frames = 1 + cfg.audio_samples // cfg.hop
        depth = len(cfg.widths)
        self.n_bins = cfg.n_fft // 2  # the Nyquist bin is dropped for the U-Net and gets bin F-2's mask
        if self.n_bins % 2**depth:
            raise ValueError(f"n_fft // 2 = {self.n_bins} must be divisible by 2**{depth}")
        self.t_pad = -self.n_frames % 2**depth
        self.backbone: AVSyncNet | None = None
        av_dims = [0] * depth
        if not cfg.audio_only:
            bcfg: AVSyncConfig = model_config(cfg.backbone, fps=cfg.fps, frames=cfg.frames, size=cfg.size,
                                              sample_rate=cfg.sample_rate)
            self.backbone = AVSyncNet(bcfg)
            dims = [bcfg.merge_width, *bcfg.fusion_widths]
            if len(cfg.av_levels) > len(dims):
                raise ValueError(f"av_levels {cfg.av_levels}: the backbone gives only {len(dims)} feature maps")
            for i, level in enumerate(cfg.av_levels):
                av_dims[level] += dims[i]
        self.av_dims = av_dims
        self.in_norm = nn.BatchNorm2d(1)
        enc, cin = [], 1
        for level, w in enumerate(cfg.widths):  # the full-resolution level is a single conv: cheap on CPU
            enc.append(_block(cin + av_dims[level], w, 2, double=level > 0))
            cin = w
        self.encoder = nn.ModuleList(enc)
        dec = []
        for w_out in cfg.widths[:-1][::-1]:  # up to the level below, concat its skip, conv
            dec.append(nn.ModuleDict({
                "up": nn.ConvTranspose2d(cin, w_out, 4, stride=2, padding=1),
                "conv": _block(2 * w_out, w_out, 1),
            }))
            cin = w_out
        self.decoder = nn.ModuleList(dec)
        self.head = nn.ConvTranspose2d(cin, 2, 4, stride=2, padding=1)  # mask logits at full resolution

    def channel_maps(self, old_widths: tuple[int, ...]) -> dict[str, tuple[list[int], list[int] | None, bool]]:
        """Where the channels of a narrower U-Net (``old_widths``: same depth, backbone and levels) sit in this one,
        for :func:`~training.separation.train.init_unet`'s widening: per U-Net conv (its module path), the indices
        in this model of the old output channels and of the old input channels (None: a BatchNorm), and whether
        the weight is transposed (a ConvTranspose2d stores (in, out, kh, kw)). Encoder inputs are ``[features,
        audio-visual features]`` and decoder convs take ``[upsampled, skip]``: each part starts at its own offset."""
        new, old = self.cfg.widths, tuple(old_widths)
        if len(old) != len(new) or any(o > n for o, n in zip(old, new, strict=True)):
            raise ValueError(f"cannot widen U-Net widths {old} into {new}")
        r = lambda n: list(range(n))  # noqa: E731
        maps: dict[str, tuple[list[int], list[int] | None, bool]] = {}
        for level in range(len(new)):
            below_old, below_new = (old[level - 1], new[level - 1]) if level else (1, 1)
            inputs = r(below_old) + [below_new + j for j in range(self.av_dims[level])]
            maps[f"encoder.{level}.0"] = (r(old[level]), inputs, False)
            maps[f"encoder.{level}.1"] = (r(old[level]), None, False)
            if level:
                maps[f"encoder.{level}.3"] = (r(old[level]), r(old[level]), False)
                maps[f"encoder.{level}.4"] = (r(old[level]), None, False)
        cin_old = old[-1]
        outs = list(zip(old[:-1][::-1], new[:-1][::-1], strict=True))
        for i, (w_old, w_new) in enumerate(outs):
            maps[f"decoder.{i}.up"] = (r(w_old), r(cin_old), True)
            maps[f"decoder.{i}.conv.0"] = (r(w_old), r(w_old) + [w_new + j for j in range(w_old)], False)
            maps[f"decoder.{i}.conv.1"] = (r(w_old), None, False)
            maps[f"decoder.{i}.conv.3"] = (r(w_old), r(w_old), False)
            maps[f"decoder.{i}.conv.4"] = (r(w_old), None, False)
            cin_old = w_old
        maps["head"] = (r(2), r(cin_old), True)
        return maps

    def _frames(self, video: torch.Tensor) -> torch.Tensor:
        if self.cfg.still_frame:
            mid = video.shape[2] // 2
            video = video[:, :, mid : mid + 1].expand(-1, -1, video.shape[2], -1, -1)  # (B, 3, T, H, W)
        return video

    def sync_logit(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """The backbone's own head: does ``audio`` belong to the visible frames? (B,) logits. Used by the
        training loss as an auxiliary correspondence task; not part of the exported graph."""
        assert self.backbone is not None
        return self.backbone(self._frames(video), audio)[0]

    def av_features(self, video: torch.Tensor, audio: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features averaged over space: list of (B, C_i, T_i)."""
        assert self.backbone is not None
        feats = self.backbone.forward_features(self._frames(video), audio)
        return [feats[i].mean(dim=(3, 4)) for i in range(len(self.cfg.av_levels))]

    def forward_masks(self, video: torch.Tensor, audio: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks (B, 2, F, frames) in [0, 1] and the mixture's re, im (B, F, frames)."""
        re, im = self.stft(audio)  # (B, F, N)
        mag = torch.sqrt(re * re + im * im + 1e-10)
        x = torch.log(mag[:, : self.n_bins] + 1e-4)[:, None]  # (B, 1, F', N)
        x = F.pad(x, (0, self.t_pad))  # (B, 1, F', N')
        x = self.in_norm(x)
        av = self.av_features(video, audio) if self.backbone is not None else []
        skips, h = [], x
        for level, block in enumerate(self.encoder):
            extra = [av[i] for i, lv in enumerate(self.cfg.av_levels) if lv == level] if av else []
            if extra:
                f, t = h.shape[2], h.shape[3]
                tiled = [F.interpolate(a, size=t, mode="linear", align_corners=False)[:, :, None, :]
                         .expand(-1, -1, f, -1) for a in extra]  # (B, C_i, F_l, T_l)
                h = torch.cat([h, *tiled], dim=1)
            h = block(h)
            skips.append(h)
        for i, stage in enumerate(self.decoder):
            h = stage["up"](h)
            h = stage["conv"](torch.cat([h, skips[len(skips) - 2 - i]], dim=1))
        logits = self.head(h)[:, :, :, : self.n_frames]  # (B, 2, F', N)
        masks = torch.sigmoid(logits)
        masks = torch.cat([masks, masks[:, :, -1:]], dim=2)  # Nyquist bin takes its neighbour's mask
        return masks, re, im

    def pair_sync_logits(self, video: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Sync logits of two tracks (B, S) against the same frames, in one backbone batch: (2B,), ``first``'s
        first."""
        return self.sync_logit(torch.cat([video, video]), torch.cat([first, second]))

    def assign(self, video: torch.Tensor, first: torch.Tensor, second: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Order two separated waveforms (B, S) as (on screen, off screen): the one the sync head scores higher
        as belonging to the frames is on screen."""
        b = first.shape[0]
        logits = self.pair_sync_logits(video, first, second)
        swap = (logits[b:] > logits[:b])[:, None]  # (B, 1)
        return torch.where(swap, second, first), torch.where(swap, first, second)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks, re, im = self.forward_masks(video, audio)
        on = self.istft(masks[:, 0] * re, masks[:, 0] * im)  # (B, S)
        off = self.istft(masks[:, 1] * re, masks[:, 1] * im)  # (B, S)
        if self.cfg.assign:
            on, off = self.assign(video, on, off)
        return on, off


_LITE = AVSyncConfig(
    fps=12.0, frames=18, size=64, sample_rate=8000, video_widths=(8, 16), video_strides=((1, 4, 4), (1, 2, 2)),
    audio_widths=(16, 32, 32), merge_width=32, fusion_widths=(32, 32), fusion_strides=((2, 2, 2), (1, 1, 1)),
)
register_model("avsync_sep_lite", AVSyncNet, _LITE)  # a lighter sync net for CPU training of the separator
# the same, also fed the frames' temporal differences (AVSyncConfig.video_diff): lip motion made explicit
register_model("avsync_sep_lite_diff", AVSyncNet, dataclasses.replace(_LITE, video_diff=True))

register_model("separation_small", AVUNetSeparator, SeparationConfig())
register_model("separation_small_still", AVUNetSeparator, SeparationConfig(still_frame=True))
register_model("separation_small_audio_only", AVUNetSeparator, SeparationConfig(audio_only=True))
register_model("separation_small_diff", AVUNetSeparator, SeparationConfig(backbone="avsync_sep_lite_diff"))
register_model("separation_small_diff_still", AVUNetSeparator,
               SeparationConfig(backbone="avsync_sep_lite_diff", still_frame=True))
register_model("separation_small_assign", AVUNetSeparator,
               SeparationConfig(backbone="avsync_sep_lite_diff", assign=True))
register_model("separation_small_assign_still", AVUNetSeparator,
               SeparationConfig(backbone="avsync_sep_lite_diff", assign=True, still_frame=True))
# the same with a U-Net of twice the channels, widened from a trained separation_small_assign (init_unet)
register_model("separation_wide_assign", AVUNetSeparator,
               SeparationConfig(backbone="avsync_sep_lite_diff", assign=True, widths=(32, 64, 128, 256)))
_TINY_SEP = SeparationConfig(fps=8.0, frames=8, size=32, sample_rate=8000, n_fft=128, hop=64,
                             backbone="avsync_tiny", widths=(4, 8, 8, 8), av_levels=(1, 2, 3))
register_model("separation_tiny", AVUNetSeparator, _TINY_SEP)
register_model("separation_tiny_still", AVUNetSeparator, dataclasses.replace(_TINY_SEP, still_frame=True))
register_model("separation_tiny_audio_only", AVUNetSeparator, dataclasses.replace(_TINY_SEP, audio_only=True))
register_model("separation_tiny_assign", AVUNetSeparator, dataclasses.replace(_TINY_SEP, assign=True))
