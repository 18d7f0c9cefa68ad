"""Transfer of the self-supervised sync network to action recognition with few labels (Owens & Efros 2018, Sec. 5).

Arms, all the same action classifier on the sync backbone (``avsync_action_small``: pooled last fused features ->
linear), fine-tuned end to end with the same schedule on ``--per-class`` labelled SynthAV clips per class:

- ``pretrained``: backbone initialised from the pretext checkpoint (``--checkpoint``);
- ``random``: random initialisation;
- ``no_audio``: pretrained, with the audio input zeroed in training and testing (``avsync_action_small_noaudio``).

Each arm is scored on unseen clips (``--test``, all sliding windows, clip probability = mean over windows).
Writes ``<out>/<arm>.json`` per arm and, with ``--table``, ``<out>/transfer.{json,md}``:

    python benchmarks/avsync_transfer.py --arms random,pretrained,no_audio --table
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

ARMS = {
    "pretrained": ("avsync_action_small", True),
    "random": ("avsync_action_small", False),
    "no_audio": ("avsync_action_small_noaudio", True),
}


def subset_csv(spec: str, n: int, cache_dir: str, name: str) -> str:
    """A CSV of the first ``n`` records of a dataset (SynthAV labels cycle through the classes, so the first
    8 * k clips hold k per class)."""
    from training.data.datasets import resolve_data

    root = resolve_data(spec, cache_dir)
    with open(root / "index.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    out = root / f"{name}-first{n}.csv"
    with open(out, "w", newline="") as fh:
        csv.writer(fh).writerows(rows[: n + 1])
    return str(out)


def run_arm(arm: str, args: argparse.Namespace) -> dict:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from training.action.train import ActionTrainConfig, DataConfig, evaluate, load_split, train_action
    from training.config import load_config
    from training.data.datasets import WindowDataset
    from training.models import build_from_config, clip_spec_for
    from training.utils import load_checkpoint

    model_name, pretrained = ARMS[arm]
    train = subset_csv(args.train, 8 * args.per_class, args.cache_dir, "fewshot")
    val = subset_csv(args.val, args.n_val, args.cache_dir, "fewshot-val")
    out = Path(args.runs) / arm  # checkpoints and histories; the results go to --out
    overrides = [
        f"model={model_name}", f"data.train={train}", f"data.val={val}", f"data.cache_dir={args.cache_dir}",
        "data.workers=1", f"optim.epochs={args.epochs}", "optim.batch_size=16", f"optim.lr={args.lr}",
        "modality_dropout=0.0", f"seed={args.seed}", "threads=1", f"out={out}", "progress=false",
        f"init_checkpoint={args.checkpoint if pretrained else ''}",
    ]
    cfg = load_config(ActionTrainConfig, None, overrides)
    train_metrics = train_action(cfg)
    ckpt = load_checkpoint(out / "best.pt")
    model = build_from_config(ckpt["model"], ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    torch.set_num_threads(1)
    test_clips = load_split(args.test, clip_spec_for(model_name), ckpt["labels"], DataConfig(cache_dir=args.cache_dir,
                            workers=1), progress=False)
    loader = DataLoader(WindowDataset(test_clips, clip_spec_for(model_name), train=False), batch_size=64)
    test = evaluate(model, loader, nn.CrossEntropyLoss(), torch.device("cpu"))
    result = {"arm": arm, "model": model_name, "pretrained": pretrained, "labels_per_class": args.per_class,
              "test_data": args.test, "test_accuracy": test["accuracy"], "test_n": test["n"],
              "val_accuracy": train_metrics["val_accuracy"], "best_epoch": train_metrics["epoch"],
              "train_seconds": train_metrics["train_seconds"], "command": " ".join(sys.argv)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{arm}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


def table(out: Path) -> str:
    rows = {arm: json.loads((out / f"{arm}.json").read_text()) for arm in ARMS if (out / f"{arm}.json").is_file()}
    ref = rows.get("pretrained", {}).get("test_accuracy")
    lines = ["| initialisation | audio | test accuracy | vs pretrained |", "| --- | --- | --- | --- |"]
    names = {"pretrained": ("sync pretext", "yes"), "random": ("random", "yes"), "no_audio": ("sync pretext", "zeroed")}
    for arm, r in rows.items():
        delta = "" if ref is None or arm == "pretrained" else f"{100 * (r['test_accuracy'] - ref):+.1f} points"
        lines.append(f"| {names[arm][0]} | {names[arm][1]} | {100 * r['test_accuracy']:.1f}% ({r['test_n']} clips) "
                     f"| {delta} |")
    text = "\n".join(lines) + "\n"
    (out / "transfer.md").write_text(text)
    (out / "transfer.json").write_text(json.dumps(rows, indent=2))
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default="random,pretrained,no_audio")
    p.add_argument("--checkpoint", default="runs/defaults/avsync/best.pt", help="pretext checkpoint")
    p.add_argument("--train", default="synthav:seed=1,n=1600", help="the labelled clips are its first ones")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--val", default="synthav:seed=2,n=160")
    p.add_argument("--n-val", type=int, default=24)
    p.add_argument("--test", default="synthav:seed=1000,n=200")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="data/synthav")
    p.add_argument("--out", default="benchmarks/results/avsync_transfer")
    p.add_argument("--runs", default="runs/avsync_transfer", help="training runs (checkpoints) per arm")
    p.add_argument("--table", action="store_true", help="write the markdown table of the arms run so far")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for arm in filter(None, args.arms.split(",")):
        run_arm(arm, args)
    if args.table:
        print(table(Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
