"""On/off-screen separation at other recording levels: the same fixed mixtures played quieter and louder, through
each published model (the ONNX graph the service runs).

    python benchmarks/separation_levels.py --model before=runs/stores/speech_recorded --model now=model_store/models \
        [--data synthav:seed=3,n=100,kind=speech,voices=data/voices/test] [--gains -20 -10 0 6] [--windows 400]

A user's video can be at any level; the models are trained on mixtures whose overall gain spans ``mix.gain``. The
mixtures are drawn once (``--seed``) from ``--data`` as training draws them (one face's voice against another
speaker's or its own off-screen voice, the off-screen voice -5..+5 dB, no recording conditions), at unit gain,
then scaled by each of ``--gains`` (dB) before the model sees them (clipped to [-1, 1] like a decoded track, the
references scaled alike). SI-SDRi on / off screen per gain, in the order the model itself assigns. Writes
benchmarks/results/separation_levels.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_speed import write_report  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("separation_levels")


def si_sdr(est: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(N, S) -> (N,) dB: the scorer's own SI-SDR (``evaluate separation``), row by row."""
    from training.separation.score import si_sdr_np

    return np.array([si_sdr_np(e, r) for e, r in zip(est, ref, strict=True)])


def mixtures(data: str, cache_dir: str, clip, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from training.separation.mixing import MixConfig
    from training.separation.train import SepDataConfig, fixed_batches, load_sources

    src = load_sources(data, clip, SepDataConfig(cache_dir=cache_dir))
    batches = fixed_batches(src, clip, MixConfig(gain=(1.0, 1.0)), seed, n)
    video, mix, refs = (np.concatenate([b[k].numpy() for b in batches])[:n] for k in range(3))
    return video, mix, refs


def score(model, video: np.ndarray, mix: np.ndarray, refs: np.ndarray, gain_db: float) -> dict[str, float]:
    g = 10.0 ** (gain_db / 20.0)
    played = np.clip(mix * g, -1.0, 1.0).astype(np.float32)
    on, off = [], []
    for i in range(0, len(mix), 16):
        out = model.run({"video": video[i : i + 16], "audio": played[i : i + 16]})
        on.append(out["on_screen"])
        off.append(out["off_screen"])
    est = np.stack([np.concatenate(on), np.concatenate(off)], axis=1)  # (N, 2, S)
    ref = refs * g
    base = si_sdr(np.repeat(played[:, None], 2, axis=1).reshape(-1, mix.shape[1]), ref.reshape(-1, mix.shape[1]))
    imp = (si_sdr(est.reshape(-1, mix.shape[1]), ref.reshape(-1, mix.shape[1])) - base).reshape(-1, 2)
    return {"si_sdri_on": float(imp[:, 0].mean()), "si_sdri_off": float(imp[:, 1].mean()),
            "clipped": float((np.abs(mix * g) > 1.0).any(axis=1).mean())}


def main(argv: list[str] | None = None) -> int:
    from model_store.registry import ModelStore
    from model_store.runtime import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="NAME=STORE_ROOT (its separation model)")
    p.add_argument("--data", default="synthav:seed=3,n=100,kind=speech,voices=data/voices/test")
    p.add_argument("--cache-dir", default="data/synthav")
    p.add_argument("--gains", nargs="+", type=float, default=[-20.0, -10.0, 0.0, 6.0])
    p.add_argument("--windows", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "separation_levels.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    models = {name: load_model(ModelStore(root), "separation") for name, root in
              (m.split("=", 1) for m in args.model)}
    clips = {m.manifest.clip.model_dump_json() for m in models.values()}
    if len(clips) != 1:
        raise SystemExit("the models' clip specs differ: their windows would not be the same mixtures")
    clip = next(iter(models.values())).manifest.clip
    video, mix, refs = mixtures(args.data, args.cache_dir, clip, args.windows, args.seed)
    rows = {name: {f"{g:g}": score(m, video, mix, refs, g) for g in args.gains} for name, m in models.items()}
    result = {"data": args.data, "windows": len(mix), "seed": args.seed, "gains_db": args.gains,
              "models": {name: {"root": root, "name": models[name].manifest.name,
                                "created": str(models[name].manifest.created)}
                         for name, root in (m.split("=", 1) for m in args.model)},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    head = "| model | " + " | ".join(f"{g:+g} dB: on / off" for g in args.gains) + " |"
    lines = [head, "| --- | " + " | ".join("---" for _ in args.gains) + " |"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[f'{g:g}']['si_sdri_on']:.2f} / {r[f'{g:g}']['si_sdri_off']:.2f}"
                                                 for g in args.gains) + " |")
    table = "\n".join(lines) + "\n"
    write_report(args.out, "separation_levels.py", argv,
                 f"SI-SDRi (dB) of {len(mix)} fixed mixtures of `{args.data}` played at each level.\n\n{table}")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
