"""Audio-visual action classifier: a 3-D conv video stream and a log-mel 2-D conv audio stream, fused late."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models import register_model
from training.models.layers import LogMelFrontend, conv2d_bn, conv3d_bn


@dataclass(frozen=True)
class AVActionConfig:
    num_classes: int = 8
    # clip spec: what one window is
    fps: float = 8.0
    frames: int = 16
    size: int = 64
    sample_rate: int = 16000
    # video stream widths; each stage halves space, the 2nd and 4th halve time
    video_widths: tuple[int, ...] = (16, 32, 64, 96)
    # audio stream
    n_fft: int = 512
    hop: int = 160
    n_mels: int = 64
    audio_widths: tuple[int, ...] = (16, 32, 64, 96)
    embed_dim: int = 128
    dropout: float = 0.2

    @property
    def audio_samples(self) -> int:
        return round(self.frames / self.fps * self.sample_rate)


class VideoStream(nn.Module):
    """Shape: (B, 3, T, H, W) -> features (B, C, T', H', W')."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers, cin = [], 3
        for i, w in enumerate(widths):
            if i == 0:  # spatial-only stem keeps the first layer cheap
                layers.append(conv3d_bn(cin, w, (1, 5, 5), (1, 2, 2)))
            else:
                layers.append(conv3d_bn(cin, w, (3, 3, 3), (2 if i % 2 == 1 else 1, 2, 2)))
            cin = w
        self.body = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.body(video)


class AudioStream(nn.Module):
    """Shape: (B, S) waveform -> features (B, C, M', T')."""

    def __init__(self, cfg: AVActionConfig) -> None:
        super().__init__()
        self.frontend = LogMelFrontend(cfg.sample_rate, cfg.n_fft, cfg.hop, cfg.n_mels)
        self.norm = nn.BatchNorm2d(1)
        layers, cin = [], 1
        for w in cfg.audio_widths:
            layers.append(conv2d_bn(cin, w, 2))
            cin = w
        self.body = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(self.frontend(audio)))


class AVActionNet(nn.Module):
    """Late-fusion audio-visual classifier.

    Shape:
        - video: (B, 3, T, H, W) float, normalised per the clip spec
        - audio: (B, S) float waveform at ``sample_rate``
        - output: logits (B, num_classes)
    """

    def __init__(self, cfg: AVActionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.video = VideoStream(cfg.video_widths)
        self.audio = AudioStream(cfg)
        self.video_proj = nn.Linear(self.video.out_dim, cfg.embed_dim)
        self.audio_proj = nn.Linear(self.audio.out_dim, cfg.embed_dim)
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(2 * cfg.embed_dim, cfg.embed_dim),
            nn.ReLU(),
            nn.Linear(cfg.embed_dim, cfg.num_classes),
        )

    def forward_features(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.video_proj(self.video(video).mean(dim=(2, 3, 4)))  # (B, D)
        a = self.audio_proj(self.audio(audio).mean(dim=(2, 3)))  # (B, D)
        return v, a

    def forward_head(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([v, a], dim=1))  # (B, K)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return self.forward_head(*self.forward_features(video, audio))


register_model("av_action_small", AVActionNet, AVActionConfig())
register_model(
    "av_action_tiny",
    AVActionNet,
    AVActionConfig(frames=8, size=32, video_widths=(4, 8, 8, 16), audio_widths=(4, 8, 8, 16), embed_dim=16,
                   n_mels=32, n_fft=256),
)
