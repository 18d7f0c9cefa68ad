"""How far a magnitude mask on the mixture's STFT can go: oracle masks computed from the clean tracks, on the same
kind of mixtures the separation model is trained and validated on.

    python benchmarks/separation_oracle.py [--config training/configs/separation_speech_sisdr.yaml]
        [--data synthav:seed=2,n=48,kind=speech,voices=data/voices/val --data ...] [--windows 400]

The shipped model predicts two masks in [0, 1] on the mixture's STFT (the clip spec's n_fft and hop) and keeps the
mixture's phase. With the clean tracks known, three masks bound what such a model can reach: the ideal ratio mask
|S| / (|S_on| + |S_off|), the Wiener-like |S|^2 / (|S_on|^2 + |S_off|^2), and the phase-sensitive mask clipped to
[0, 1]. Mixtures are drawn as ``--config``'s training draws them (its ``mix`` levels; its recording conditions
``aug`` for the first ``--data``, the validation set, none for the others, as ``evaluate separation`` scores clean
clips). SI-SDRi on / off screen. Writes benchmarks/results/separation_oracle.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_speed import write_report  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MASKS = ("ratio", "wiener", "phase_sensitive")


def oracle(data: str, cfg, aug, windows: int, seed: int) -> dict[str, list[float]]:
    from training.models import clip_spec_for
    from training.models.separation import InverseStft, Stft
    from training.separation.train import fixed_batches, load_sources, si_sdr

    clip = clip_spec_for(cfg.model, cfg.window_hop_s, stft=True)
    stft = Stft(clip.stft.n_fft, clip.stft.hop_length)
    istft = InverseStft(clip.stft.n_fft, clip.stft.hop_length, clip.audio_samples)
    src = load_sources(data, clip, cfg.data)
    out: dict[str, list[torch.Tensor]] = {m: [] for m in MASKS}
    for _, mix, refs in fixed_batches(src, clip, cfg.mix, seed, windows, aug=aug):
        re, im = stft(mix)
        mix_mag = torch.sqrt(re * re + im * im) + 1e-8
        specs = [stft(refs[:, k]) for k in range(2)]  # each clean track's (re, im)
        mags = [torch.sqrt(r * r + i * i) for r, i in specs]
        base = si_sdr(mix[:, None].expand_as(refs), refs)
        for name in MASKS:
            if name == "ratio":
                masks = [m / (mags[0] + mags[1] + 1e-8) for m in mags]
            elif name == "wiener":
                masks = [m**2 / (mags[0] ** 2 + mags[1] ** 2 + 1e-8) for m in mags]
            else:  # the clean track's projection on the mixture, over the mixture's magnitude
                masks = [((r * re + i * im) / (mix_mag * mix_mag)).clamp(0.0, 1.0) for r, i in specs]
            est = torch.stack([istft(m * re, m * im) for m in masks], dim=1)
            out[name].append(si_sdr(est, refs) - base)
    return {name: torch.cat(v)[:windows].mean(0).tolist() for name, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    from training.config import load_config
    from training.separation.train import SeparationTrainConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="training/configs/separation_speech_sisdr.yaml")
    p.add_argument("--data", action="append",
                   help="data specs (default: the config's validation set, then our own test speakers)")
    p.add_argument("--windows", type=int, default=400)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--out", type=Path, default=RESULTS / "separation_oracle.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(SeparationTrainConfig, args.config, [])
    datas = args.data or [cfg.data.val, "synthav:seed=3,n=100,kind=speech,voices=data/voices/test"]
    rows = {}
    with torch.no_grad():
        for k, data in enumerate(datas):
            rows[data] = oracle(data, cfg, cfg.aug if k == 0 else None, args.windows, args.seed)
    result = {"config": args.config, "windows": args.windows, "seed": args.seed, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| mixtures | " + " | ".join(f"{m} mask: on / off" for m in MASKS) + " |",
             "| --- | " + " | ".join("---" for _ in MASKS) + " |"]
    for k, (data, r) in enumerate(rows.items()):
        label = f"`{data}`" + (" (with the config's recording conditions)" if k == 0 else " (clean)")
        lines.append(f"| {label} | " + " | ".join(f"{r[m][0]:.2f} / {r[m][1]:.2f}" for m in MASKS) + " |")
    table = "\n".join(lines) + "\n"
    write_report(args.out, "separation_oracle.py", argv,
                 f"Oracle-mask SI-SDRi (dB), {args.windows} mixtures per set, STFT of `{args.config}`'s model.\n\n"
                 + table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
