"""Audio-visual synchronisation network with early fusion (Owens & Efros, ECCV 2018), and its class activation map.

A 1-D conv audio branch over the raw waveform and a 3-D conv video branch meet at mid level: the audio features are
pooled to the video's time steps, tiled over space and concatenated with the visual features; 3-D residual blocks
follow; global average pooling and a 1x1x1 conv give one "in sync" logit. The same 1x1x1 conv applied at every
position of the last feature map is the class activation map (CAM): where the network finds evidence that sound
and picture belong together, i.e. where the sound comes from.

Because the head is linear, ``logit == cam.mean((1, 2, 3))`` exactly (the bias is inside the CAM).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.models import register_model

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class AVSyncConfig:
    # clip spec: what one window is
    fps: float = 8.0
    frames: int = 12
    size: int = 64
    sample_rate: int = 16000
    # the video branch also sees the frames' temporal differences (3 more input channels): motion, explicitly
    video_diff: bool = False
    # video branch before fusion: one conv3d + BN + ReLU per stage
    video_widths: tuple[int, ...] = (12, 24)
    video_kernels: tuple[Triple, ...] = ((3, 5, 5), (3, 3, 3))
    video_strides: tuple[Triple, ...] = ((1, 2, 2), (1, 2, 2))
    # audio branch: strided conv1d + BN + ReLU over the waveform; max-pool after the first
    audio_widths: tuple[int, ...] = (16, 32, 32)
    audio_kernels: tuple[int, ...] = (65, 15, 15)
    audio_strides: tuple[int, ...] = (4, 4, 4)
    audio_pool: int = 4
    # fusion: concat -> 1x1x1 merge conv -> 3-D residual blocks
    merge_width: int = 32
    fusion_widths: tuple[int, ...] = (32, 48)
    fusion_strides: tuple[Triple, ...] = ((2, 2, 2), (1, 1, 1))
    # spatial kernel of the residual blocks after fusion; 1 keeps each CAM position's view local (its receptive
    # field is the video branch's), so the map cannot spread the evidence of one object over the frame
    fusion_spatial_kernel: int = 3
    # "" or "space" or "space_time": the residual blocks after fusion drop their strides on those axes and dilate
    # every later conv by the strides dropped ("a trous"), so the CAM is denser with the same weights and receptive
    # field: with the same weights, its cells at multiples of the dropped strides are the strided network's cells
    fusion_dense: str = ""
    dropout: float = 0.0  # before the head (training only)
    # how the CAM becomes the logit: "avg" (the paper: global average pooling, then the 1x1x1 head) or "lse"
    # (log-mean-exp over every position, a smooth max: "some place in this clip is in sync", which asks the
    # network to put its evidence where the sound comes from rather than spread it over the frame)
    cam_pool: str = "avg"

    @property
    def audio_samples(self) -> int:
        return round(self.frames / self.fps * self.sample_rate)

    @property
    def feature_dim(self) -> int:
        return self.fusion_widths[-1] if self.fusion_widths else self.merge_width


class ResBlock3d(nn.Module):
    """Two 3 x k x k convs with BN and a projected shortcut when the shape changes.

    Shape: (B, Cin, T, H, W) -> (B, Cout, T / st, H / ss, W / ss)
    """

    def __init__(self, cin: int, cout: int, stride: Triple, spatial: int = 3, dilation: Triple = (1, 1, 1),
                 dilation2: Triple | None = None, project: bool = False) -> None:
        super().__init__()
        kernel = (3, spatial, spatial)
        dilation2 = dilation if dilation2 is None else dilation2

        def pad(d: Triple) -> Triple:
            return (d[0] * (kernel[0] // 2), d[1] * (kernel[1] // 2), d[2] * (kernel[2] // 2))

        self.conv1 = nn.Conv3d(cin, cout, kernel, stride=stride, padding=pad(dilation), dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, kernel, padding=pad(dilation2), dilation=dilation2, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if project or cin != cout or any(s != 1 for s in stride):
            self.shortcut = nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class AudioBranch(nn.Module):
    """Strided 1-D convs over the waveform.

    Shape: (B, S) -> (B, C, L)
    """

    def __init__(self, cfg: AVSyncConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for i, (w, k, s) in enumerate(zip(cfg.audio_widths, cfg.audio_kernels, cfg.audio_strides, strict=True)):
            layers += [nn.Conv1d(cin, w, k, stride=s, padding=k // 2, bias=False), nn.BatchNorm1d(w), nn.ReLU()]
            if i == 0 and cfg.audio_pool > 1:
                layers.append(nn.MaxPool1d(cfg.audio_pool, cfg.audio_pool))
            cin = w
        self.body = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.body(audio[:, None, :])  # (B, C, L)


class VideoBranch(nn.Module):
    """3-D convs before fusion.

    Shape: (B, 3, T, H, W) -> (B, C, T1, H1, W1)
    """

    def __init__(self, cfg: AVSyncConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self.diff = cfg.video_diff
        cin = 6 if cfg.video_diff else 3
        for w, k, s in zip(cfg.video_widths, cfg.video_kernels, cfg.video_strides, strict=True):
            pad = tuple(x // 2 for x in k)
            layers += [nn.Conv3d(cin, w, k, stride=s, padding=pad, bias=False), nn.BatchNorm3d(w), nn.ReLU()]
            cin = w
        self.body = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if self.diff:
            d = F.pad(video[:, :, 1:] - video[:, :, :-1], (0, 0, 0, 0, 1, 0))  # (B, 3, T, H, W), 0 at t = 0
            video = torch.cat([video, d], dim=1)  # (B, 6, T, H, W)
        return self.body(video)


class AVSyncNet(nn.Module):
    """Early-fusion audio-visual sync network.

    Shape:
        - video: (B, 3, T, H, W) float, normalised per the clip spec
        - audio: (B, S) float waveform at ``sample_rate``, S = ``cfg.audio_samples``
        - output: ``logit`` (B,) "audio in sync with the frames", ``cam`` (B, T', H', W') with
          ``logit == cam.mean((1, 2, 3))`` (``cam_pool="avg"``) or ``log(mean(exp(cam)))`` (``"lse"``)
    """

    def __init__(self, cfg: AVSyncConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.video = VideoBranch(cfg)
        self.audio = AudioBranch(cfg)
        self.merge = nn.Sequential(
            nn.Conv3d(self.video.out_dim + self.audio.out_dim, cfg.merge_width, 1, bias=False),
            nn.BatchNorm3d(cfg.merge_width),
            nn.ReLU(),
        )
        if cfg.fusion_dense not in ("", "space", "space_time"):
            raise ValueError(f"fusion_dense must be '', 'space' or 'space_time', not {cfg.fusion_dense!r}")
        dense = (cfg.fusion_dense == "space_time", cfg.fusion_dense != "", cfg.fusion_dense != "")
        blocks, cin, dil = [], cfg.merge_width, (1, 1, 1)
        for w, s in zip(cfg.fusion_widths, cfg.fusion_strides, strict=True):
            kept = tuple(1 if d else x for x, d in zip(s, dense, strict=True))
            after = tuple(a * (x if d else 1) for a, x, d in zip(dil, s, dense, strict=True))
            blocks.append(ResBlock3d(cin, w, kept, cfg.fusion_spatial_kernel, dil, after, project=s != (1, 1, 1)))
            cin, dil = w, after
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout3d(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        if cfg.cam_pool not in ("avg", "lse"):
            raise ValueError(f"cam_pool must be 'avg' or 'lse', not {cfg.cam_pool!r}")
        self.head = nn.Conv3d(cin, 1, 1)  # the CAM's weights; 1x1x1 so it applies at every position

    def fuse(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Early fusion. Shape: -> (B, merge_width, T1, H1, W1)."""
        return self._merge(self.video(video), audio)

    def _merge(self, v: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        a = self.audio(audio)  # (B, Ca, L)
        t1, h1, w1 = v.shape[2], v.shape[3], v.shape[4]
        a = F.adaptive_avg_pool1d(a, t1)  # (B, Ca, T1)
        a = a[:, :, :, None, None].expand(-1, -1, -1, h1, w1)  # (B, Ca, T1, H1, W1)
        return self.merge(torch.cat([v, a], dim=1))  # (B, Cm, T1, H1, W1)

    def forward_features(self, video: torch.Tensor, audio: torch.Tensor) -> list[torch.Tensor]:
        """Fused features, finest first: [after fusion, after each residual block]; the last feeds the head."""
        x = self.fuse(video, audio)
        feats = [x]
        for block in self.blocks:
            x = block(x)  # (B, C, T', H', W')
            feats.append(x)
        return feats

    def forward_head(self, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam = self.head(self.dropout(last))[:, 0]  # (B, T', H', W')
        if self.cfg.cam_pool == "lse":
            flat = cam.flatten(1)  # (B, N)
            return torch.logsumexp(flat, dim=1) - math.log(flat.shape[1]), cam
        return cam.mean(dim=(1, 2, 3)), cam  # (B,), (B, T', H', W')

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(video, audio)[-1])

    def forward_shared_video(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training helper: ``audio`` holds k tracks per video, track-major (all first tracks, then all second,
        ...); the video branch runs once. Same result as ``forward(video.repeat(k, 1, 1, 1, 1), audio)``.

        Shape: video (B, 3, T, H, W), audio (k * B, S) -> logit (k * B,), cam (k * B, T', H', W')
        """
        v = self.video(video)  # (B, Cv, T1, H1, W1)
        x = self._merge(v.repeat(audio.shape[0] // video.shape[0], 1, 1, 1, 1), audio)
        for block in self.blocks:
            x = block(x)
        return self.forward_head(x)


@dataclass(frozen=True)
class AVSyncActionConfig(AVSyncConfig):
    num_classes: int = 8
    head_dropout: float = 0.2
    zero_audio: bool = False  # ablation: the network never hears the audio (fed zeros)


class AVSyncActionNet(nn.Module):
    """Action classifier on the sync backbone: globally pooled last fused features -> linear.

    ``backbone`` has the :class:`AVSyncNet` parameter names (less the sync head), so a pretrained sync checkpoint
    loads into it with :meth:`load_backbone`.

    Shape: video (B, 3, T, H, W), audio (B, S) -> logits (B, num_classes)
    """

    def __init__(self, cfg: AVSyncActionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = AVSyncNet(cfg)
        self.backbone.head = None  # the sync head (the CAM's weights) is not used for actions
        self.classifier = nn.Sequential(nn.Dropout(cfg.head_dropout), nn.Linear(cfg.feature_dim, cfg.num_classes))

    def load_backbone(self, sync_state: dict[str, torch.Tensor]) -> None:
        """Load a pretrained :class:`AVSyncNet` state dict (its sync head is dropped); every backbone tensor must
        be there with its shape."""
        own = self.backbone.state_dict()
        state = {k: v for k, v in sync_state.items() if not k.startswith("head.")}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or shapes:
            raise ValueError(f"not an AVSyncNet of this config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                             f"other shapes {shapes[:5]}")
        self.backbone.load_state_dict(state, strict=True)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        if self.cfg.zero_audio:
            audio = torch.zeros_like(audio)
        last = self.backbone.forward_features(video, audio)[-1]  # (B, C, T', H', W')
        return self.classifier(last.mean(dim=(2, 3, 4)))  # (B, K)


# the frames' temporal differences are what made the pretext learn within a CPU budget (without them the small
# network stayed at chance for 600 steps on SynthAV; with them it passed 74% held-out accuracy by step 400)
_SMALL = AVSyncConfig(video_diff=True)
# local evidence, finer map: a third video conv (receptive field 17 px, about a SynthAV object), fusion at stride
# 4 with no spatial mixing after it, so the CAM is 16 x 16 and each cell judges only what moves around it
_LOCAL = dataclasses.replace(
    _SMALL, video_widths=(12, 24, 32), video_kernels=((3, 5, 5), (3, 3, 3), (3, 3, 3)),
    video_strides=((1, 2, 2), (1, 2, 2), (1, 1, 1)), fusion_widths=(48, 64), fusion_strides=((2, 1, 1), (1, 1, 1)),
    fusion_spatial_kernel=1,
)
_TINY = AVSyncConfig(
    fps=8.0, frames=8, size=32, video_diff=True, video_widths=(4, 8), audio_widths=(4, 8, 8), merge_width=8,
    fusion_widths=(8, 12), fusion_strides=((2, 2, 2), (1, 1, 1)),
)
# the paper's sizes: 4.2 s windows of 125 frames at 29.97 fps, 224 x 224, 21 kHz audio; widths as in its Fig. 2
_OWENS2018 = AVSyncConfig(
    fps=29.97, frames=125, size=224, sample_rate=21000,
    video_widths=(64, 64, 128), video_kernels=((5, 7, 7), (3, 3, 3), (3, 3, 3)),
    video_strides=((2, 2, 2), (1, 2, 2), (2, 2, 2)),
    audio_widths=(64, 128, 128, 256), audio_kernels=(65, 15, 15, 15), audio_strides=(4, 4, 4, 4),
    audio_pool=4, merge_width=128, fusion_widths=(128, 256, 512), fusion_strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)),
)

register_model("avsync_small", AVSyncNet, _SMALL)
register_model("avsync_local", AVSyncNet, _LOCAL)
register_model("avsync_local_lse", AVSyncNet, dataclasses.replace(_LOCAL, cam_pool="lse"))
register_model("avsync_dense", AVSyncNet, dataclasses.replace(_SMALL, fusion_dense="space"))
register_model("avsync_small_nodiff", AVSyncNet, dataclasses.replace(_SMALL, video_diff=False))
register_model("avsync_tiny", AVSyncNet, _TINY)
register_model("owens2018", AVSyncNet, _OWENS2018)
register_model("avsync_action_small", AVSyncActionNet, AVSyncActionConfig(**_SMALL.__dict__))
register_model("avsync_action_small_noaudio", AVSyncActionNet, AVSyncActionConfig(**_SMALL.__dict__, zero_audio=True))
register_model("avsync_action_tiny", AVSyncActionNet, AVSyncActionConfig(**_TINY.__dict__))
