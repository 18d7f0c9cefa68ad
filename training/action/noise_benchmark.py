"""``python -m training noise-benchmark``: clean test accuracy of the noise-tolerant method and its baselines
under noisy labels x noisy audio-visual correspondence, mean +- std over seeds.

One decode of the data serves every cell, method and seed. The first ``--n-train`` clips of ``--data`` are
the training pool (noise is drawn on them per seed, the same noise for every method), the last ``--n-test``
clips are the clean test set, never trained on. No model selection: each method is scored after its last
epoch, so no method sees clean labels.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# torch and the models are imported inside the functions: building the CLI parser stays light.
METHOD_NAMES = ("ce", "gce", "sce", "coteaching", "ntl")
BENCH_MODEL_NAMES = ("bench", "av_action_small")


def bench_model_config(name: str):
    """``bench``: av_action_small's layout at half the frame rate and half the size (far cheaper), so that a
    15-cell grid fits a shared 2-core CPU; its windows are derived from av_action_small's decode."""
    from training.models.action import AVActionConfig

    if name == "bench":
        return AVActionConfig(fps=4.0, frames=8, size=32, video_widths=(16, 32, 48, 64),
                              audio_widths=(16, 32, 48, 64), embed_dim=64)
    if name == "av_action_small":
        return AVActionConfig()
    raise KeyError(name)

# NTL ablations: one component switched off each
ABLATIONS: dict[str, dict[str, bool]] = {
    "ntl-no-estimation": {"estimation": False},
    "ntl-no-category": {"category": False},
    "ntl-no-phase1": {"contrastive": False},
    "ntl-no-mute": {"mute_suspect_audio": False},
    "ntl-no-trust": {"trust": False},
    "ntl-no-correction": {"correction": False},
    "ntl-no-given": {"given": False},
}


def parse_cells(label_noise: str, label_type: str, corr_noise: str,
                cells: str | None) -> list[tuple[str, float, float]]:
    """Cells as (type, label rate, correspondence rate): ``--cells sym:0.4:0.2,asym:0.4:0`` or the product of
    ``--label-noise`` and ``--corr-noise`` lists."""
    if cells:
        out = []
        for part in cells.split(","):
            kind, r, c = part.split(":")
            out.append((kind, float(r), float(c)))
        return out
    return [(label_type, float(r), float(c)) for r in label_noise.split(",") for c in corr_noise.split(",")]


def parse_ntl_set(text: str | None) -> dict:
    """``phase1_frac=0.3,knn_k=30`` -> NTLConfig overrides (values parsed as YAML scalars)."""
    import yaml

    out = {}
    for part in filter(None, (text or "").split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _factory(cfg, seed: int):
    import torch

    from training.models.action import AVActionNet

    def make():
        torch.manual_seed(seed)
        return AVActionNet(cfg)

    return make


def run_one(method: str, train, test, mcfg, kind: str, r: float, c: float, seed: int, epochs: int,
            batch_size: int, lr: float, ntl_set: dict | None = None) -> dict:
    from training.action.noisy.methods import METHODS, NTLConfig, RunConfig, accuracy
    from training.data.noise import make_noise

    noise = make_noise(train.labels, mcfg.num_classes, r, kind, c, seed=10_000 + seed)
    noisy = train.with_noise(noise.labels, noise.audio_source)
    ntl = NTLConfig(**{**(ntl_set or {}), **ABLATIONS.get(method, {})})
    cfg = RunConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, ntl=ntl)
    fn = METHODS["ntl" if method.startswith("ntl") else method]
    t0 = time.perf_counter()
    model, info = fn(_factory(mcfg, seed), noisy, cfg, noise)
    result = {
        "method": method, "label_noise_type": kind, "label_noise": r, "corr_noise": c, "seed": seed,
        "accuracy": accuracy(model, test), "train_seconds": time.perf_counter() - t0,
        "noise": noise.summary(),
    }
    for key in ("corr_auc", "corr_auc_loss", "labels_corrected", "labels_broken"):
        if key in info:
            result[key] = info[key]
    if info.get("corrections"):
        result["corrections"] = info["corrections"]
    if info.get("phase1"):
        result["phase1"] = info["phase1"]
    return result


def _fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "-"
    m = float(np.mean(values)) * scale
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} +- {float(np.std(values)) * scale:.{digits}f}"


def markdown_table(results: list[dict], methods: list[str]) -> str:
    """Rows: noise cells; columns: methods (clean test accuracy %, mean +- std over seeds), then NTL's
    estimation AUC and the wrong labels its phase 2 corrects."""
    cells = sorted({(r["label_noise_type"], r["label_noise"], r["corr_noise"]) for r in results},
                   key=lambda x: (x[0] != "sym", x[1], x[2]))
    head = ["label noise", "corr. noise", *methods, "NTL corr. AUC", "NTL labels corrected / wrong"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, r, c in cells:
        row = [f"{r:.0%} {kind}", f"{c:.0%}"]
        for m in methods:
            accs = [x["accuracy"] for x in results if x["method"] == m and
                    (x["label_noise_type"], x["label_noise"], x["corr_noise"]) == (kind, r, c)]
            row.append(_fmt(accs))
        ntl = [x for x in results if x["method"] == "ntl" and
               (x["label_noise_type"], x["label_noise"], x["corr_noise"]) == (kind, r, c)]
        aucs = [x["corr_auc"] for x in ntl if x.get("corr_auc") is not None and not math.isnan(x["corr_auc"])]
        row.append(_fmt(aucs, 1.0, 3))
        fixed = [(x["labels_corrected"], x["noise"]["label_noisy"]) for x in ntl if x.get("labels_corrected")
                 is not None]
        row.append(" ".join(f"{a}/{b}" for a, b in fixed) if fixed and fixed[0][1] else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(results: list[dict], methods: list[str], path: Path) -> None:
    """Accuracy against symmetric label noise, one panel per correspondence-noise rate (asymmetric cells are
    drawn as separate markers at their rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corr = sorted({r["corr_noise"] for r in results})
    colours = {m: f"C{i}" for i, m in enumerate(methods)}  # one colour per method across panels
    fig, axes = plt.subplots(1, len(corr), figsize=(4.5 * len(corr), 3.6), squeeze=False, sharey=True)
    for ax, c in zip(axes[0], corr, strict=True):
        for m in methods:
            for kind, style in (("sym", "-o"), ("asym", "s")):
                pts = sorted({r["label_noise"] for r in results if r["method"] == m and r["corr_noise"] == c
                              and r["label_noise_type"] == kind})
                if not pts:
                    continue
                acc = [[x["accuracy"] for x in results if x["method"] == m and x["corr_noise"] == c
                        and x["label_noise_type"] == kind and x["label_noise"] == p] for p in pts]
                means = [np.mean(a) * 100 for a in acc]
                stds = [np.std(a) * 100 for a in acc]
                label = m if kind == "sym" else f"{m} (asym)"
                ax.errorbar([p * 100 for p in pts], means, yerr=stds, fmt=style, label=label, capsize=3,
                            color=colours[m], fillstyle="none" if kind == "asym" else "full")
        ax.set_title(f"correspondence noise {c:.0%}")
        ax.set_xlim(-5, 65)
        ax.set_xlabel("label noise (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("clean test accuracy (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_benchmark(args) -> dict:
    import torch

    from training.action.noisy.arrays import clip_spec_of, load_array_set
    from training.data.synthav import ACTION_CLASSES
    from training.models import clip_spec_for

    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    for m in methods:
        if m not in METHOD_NAMES and m not in ABLATIONS:
            raise SystemExit(f"noise-benchmark: unknown method {m!r} ({', '.join([*METHOD_NAMES, *ABLATIONS])})")
    mcfg = bench_model_config(args.model)

    full = load_array_set(args.data, clip_spec_for("av_action_small"), list(ACTION_CLASSES),
                          cache_dir=args.cache_dir, progress=True)
    spec = clip_spec_of(full.spec, fps=mcfg.fps, frames=mcfg.frames, height=mcfg.size, width=mcfg.size,
                        audio_samples=mcfg.audio_samples)
    data = full if spec == full.spec else full.downsample(spec)
    if args.n_train + args.n_test > len(data):
        raise SystemExit(f"noise-benchmark: {args.n_train} + {args.n_test} clips asked, {len(data)} decoded")
    train, test = data.subset(slice(0, args.n_train)), data.subset(slice(len(data) - args.n_test, len(data)))
    cells = parse_cells(args.label_noise, args.label_noise_type, args.corr_noise, args.cells)
    out = Path(args.json) if args.json else None
    results: list[dict] = []
    if out is not None and args.resume and out.is_file():
        results = json.loads(out.read_text())["results"]
    done = {(r["method"], r["label_noise_type"], r["label_noise"], r["corr_noise"], r["seed"]) for r in results}
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    settings["model_config"] = dataclasses.asdict(mcfg)
    for kind, r, c in cells:
        for seed in range(args.seeds):
            for m in methods:
                if (m, kind, r, c, seed) in done:
                    continue
                res = run_one(m, train, test, mcfg, kind, r, c, seed, args.epochs, args.batch_size, args.lr,
                              parse_ntl_set(args.ntl_set))
                results.append(res)
                log.info("%s %s %.0f%% / corr %.0f%% seed %d: acc %.4f (%.0f s)%s", m, kind, r * 100, c * 100, seed,
                         res["accuracy"], res["train_seconds"],
                         f" corr AUC {res['corr_auc']:.3f}" if res.get("corr_auc") is not None else "")
                if out is not None:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps({"settings": settings, "results": results}, indent=1))
    shown = [m for m in [*METHOD_NAMES, *ABLATIONS] if any(x["method"] == m for x in results)]
    table = markdown_table(results, shown)
    print(table)
    if out is not None:
        out.write_text(json.dumps({"settings": settings, "results": results, "table": table}, indent=1))
        out.with_suffix(".md").write_text(table + "\n")
        plot(results, [m for m in shown if m in METHOD_NAMES], Path(args.plot or out.with_suffix(".png")))
    return {"results": results, "table": table}


def add_parser(sub) -> None:
    b = sub.add_parser("noise-benchmark", help="noisy labels x noisy correspondence: NTL against baselines")
    b.add_argument("--data", default="synthav:seed=1,n=1600", help="decoded once; train pool first, test last")
    b.add_argument("--n-train", type=int, default=800)
    b.add_argument("--n-test", type=int, default=400)
    b.add_argument("--label-noise", default="0.4", help="comma list of rates, e.g. 0,0.2,0.4,0.6")
    b.add_argument("--label-noise-type", default="sym", choices=["sym", "asym"])
    b.add_argument("--corr-noise", default="0.2", help="comma list of rates")
    b.add_argument("--cells", help="explicit cells instead of the product, e.g. sym:0.4:0.2,asym:0.4:0")
    b.add_argument("--methods", default="ce,gce,sce,coteaching,ntl",
                   help=f"of {', '.join([*METHOD_NAMES, *ABLATIONS])}")
    b.add_argument("--seeds", type=int, default=3)
    b.add_argument("--epochs", type=int, default=40)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--lr", type=float, default=2e-3)
    b.add_argument("--model", default="bench", choices=BENCH_MODEL_NAMES)
    b.add_argument("--ntl-set", help="NTL settings, e.g. phase1_frac=0.3,knn_k=30 (see NTLConfig)")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--cache-dir", default="data/synthav")
    b.add_argument("--json", help="results JSON (written after every run); the table goes beside it as .md")
    b.add_argument("--plot", help="PNG path (default: the JSON's path with .png)")
    b.add_argument("--resume", action="store_true", help="skip runs already in --json")
    b.set_defaults(func=_cmd)


def _cmd(args) -> int:
    run_benchmark(args)
    return 0
