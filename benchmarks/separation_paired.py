"""Separation checkpoints compared on the same fresh validation mixtures, paired: the mean difference per mixture and
its standard error, which a run's own validation (96 fixed windows, also used to pick its best step) is too small
and too used to give.

    python benchmarks/separation_paired.py runs/separation_speech_recorded/best.pt \
        runs/separation_speech_sisdr/best.pt runs/separation_speech_wide/best.pt [--gain 0.5 1.5] [--windows 400]
        [--config training/configs/separation_speech_recorded.yaml] [--val synthav:seed=2,n=100,kind=speech,voices=...]

Mixtures are drawn from ``--config``'s validation set (its speakers only: never a test set; ``--val`` names another
validation set, e.g. the Drascula Spanish cast's faces, ``voices=data/voices_drascula/val``), with its recording
conditions and the ``--gain`` range, from ``--seed`` (not the seed training validates with). Every checkpoint
scores the same mixtures, outputs in the order the model assigns. Prints SI-SDRi on / off per checkpoint and, for
each later one, its mean improvement over the first (both tracks averaged).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from training.config import load_config
    from training.models import clip_spec_for, create_model
    from training.separation.train import SeparationTrainConfig, fixed_batches, load_sources, si_sdr
    from training.utils import load_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--gain", nargs=2, type=float, default=[0.5, 1.5], help="the mixtures' overall gain range")
    p.add_argument("--windows", type=int, default=400)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--config", default="training/configs/separation_speech_recorded.yaml")
    p.add_argument("--val", help="validation data instead of the config's (speakers no run trains on; not a test set)")
    args = p.parse_args(argv)
    if args.val and "/test" in args.val:
        p.error("--val must be a validation set, not a test set")
    torch.set_num_threads(1)
    overrides = [f"mix.gain=[{args.gain[0]},{args.gain[1]}]", *([f"data.val={args.val}"] if args.val else [])]
    cfg = load_config(SeparationTrainConfig, args.config, overrides)
    clip = clip_spec_for(cfg.model, cfg.window_hop_s, stft=True)
    src = load_sources(cfg.data.val, clip, cfg.data)
    batches = fixed_batches(src, clip, cfg.mix, args.seed, args.windows, aug=cfg.aug)
    print(f"{args.windows} mixtures of {cfg.data.val}, gain {args.gain}, conditions {cfg.aug}")
    mixture_sdr = [si_sdr(mix[:, None].expand_as(refs), refs) for _, mix, refs in batches]  # the same for every model
    scores = {}
    for path in args.checkpoints:
        ck = load_checkpoint(path)
        model = create_model(ck["model"])
        model.load_state_dict(ck["state_dict"])
        model.eval()
        out = []
        with torch.no_grad():
            for (video, mix, refs), base in zip(batches, mixture_sdr, strict=True):
                est = torch.stack(model(video, mix), dim=1)
                out.append(si_sdr(est, refs) - base)
        scores[path] = torch.cat(out)[: args.windows].numpy()
        print(f"{path}: SI-SDRi on {scores[path][:, 0].mean():.2f} off {scores[path][:, 1].mean():.2f} dB")
    base = scores[args.checkpoints[0]]
    for path in args.checkpoints[1:]:
        d = (scores[path] - base).mean(axis=1)
        print(f"{path} - {args.checkpoints[0]}: {d.mean():+.2f} dB (standard error {d.std() / np.sqrt(len(d)):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
