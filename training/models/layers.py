"""Layers shared by the models: an exportable log-spectrogram front end and conv blocks."""

from __future__ import annotations

import math

import torch
from torch import nn


def _mel_matrix(n_freqs: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular mel filterbank (n_freqs, n_mels), HTK mel scale, unit peak."""

    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = torch.linspace(0, sample_rate / 2, n_freqs)
    mel_pts = torch.linspace(hz_to_mel(torch.tensor(30.0)), hz_to_mel(torch.tensor(sample_rate / 2)), n_mels + 2)
    hz_pts = mel_to_hz(mel_pts)
    lower, centre, upper = hz_pts[:-2], hz_pts[1:-1], hz_pts[2:]
    f = freqs[:, None]
    up = (f - lower) / (centre - lower)
    down = (upper - f) / (upper - centre)
    return torch.clamp(torch.minimum(up, down), min=0.0)


class LogMelFrontend(nn.Module):
    """Waveform -> log-mel spectrogram with a fixed DFT as a strided conv (real ops only, exports to ONNX).

    Shape:
        - input: (B, S) float waveform
        - output: (B, 1, n_mels, frames) with frames = 1 + (S - n_fft) // hop (no padding)
    """

    def __init__(self, sample_rate: int, n_fft: int = 512, hop: int = 160, n_mels: int = 64) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        n_freqs = n_fft // 2 + 1
        t = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_freqs, dtype=torch.float64)[:, None]
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * t / n_fft)
        angle = 2 * math.pi * k * t / n_fft
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])  # (2F, n_fft)
        self.register_buffer("basis", basis.float()[:, None, :], persistent=False)
        self.register_buffer("mel", _mel_matrix(n_freqs, n_mels, sample_rate), persistent=False)
        self.n_freqs = n_freqs

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = nn.functional.conv1d(wave[:, None, :], self.basis, stride=self.hop)  # (B, 2F, frames)
        re, im = spec[:, : self.n_freqs], spec[:, self.n_freqs :]
        power = re * re + im * im  # (B, F, frames)
        mel = torch.einsum("bft,fm->bmt", power, self.mel)  # (B, n_mels, frames)
        return torch.log(mel + 1e-6)[:, None]  # (B, 1, n_mels, frames)


def conv3d_bn(cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> nn.Sequential:
    pad = tuple(k // 2 for k in kernel)
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel, stride=stride, padding=pad, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


def conv2d_bn(cin: int, cout: int, stride: int | tuple[int, int] = 2) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )
