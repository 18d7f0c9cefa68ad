"""Two published action models on the same unseen clips, clip by clip (issue #12: does a rebuild match what ships?).

    python benchmarks/compare_action.py model_store/models runs/stores/rebuilt
    python benchmarks/compare_action.py A B --data synthav:seed=1000,n=1000 --data synthav:seed=3000,n=500

Each store's latest ``action`` model scores every ``--data`` set through ``model_store`` (the service's decode, windows
and clip probabilities, as ``python -m training evaluate action`` does). Reported per set and over all of them:
each model's accuracy, the clips only one of the two gets right, and the exact two-sided McNemar p-value on those
discordant clips (how likely so uneven a split is if the two models were equally good); per model, the classes
whose clips go mostly elsewhere (a collapsed class: the failure of a fragile noisy-label run). Writes
``--out``.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from math import comb
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_speed import write_report  # noqa: E402

from model_store.registry import ModelStore  # noqa: E402
from model_store.runtime import load_model  # noqa: E402
from training.action.score import action_probabilities, decode_eval_set  # noqa: E402
from training.data.datasets import read_records, resolve_data  # noqa: E402

SETS = ["synthav:seed=1000,n=1000", "synthav:seed=1001,n=500", "synthav:seed=1002,n=500", "synthav:seed=3000,n=500"]


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test: the binomial(n, 1/2) tail at the smaller of the two discordant counts."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n)


def lost_classes(truth: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict[str, dict[str, int]]:
    """Classes of which fewer than half the clips are predicted as themselves: where their clips went."""
    out = {}
    for k, name in enumerate(labels):
        mine = pred[truth == k]
        if len(mine) and (mine == k).mean() < 0.5:
            went = np.bincount(mine, minlength=len(labels))
            out[name] = {labels[j]: int(c) for j, c in enumerate(went) if c}
    return out


def compare(stores: list[str], sets: list[str], cache_dir: str) -> dict:
    models = [load_model(ModelStore(s), "action", None) for s in stores]
    labels = list(models[0].manifest.labels)
    if any(list(m.manifest.labels) != labels for m in models):
        raise SystemExit("the two models have different labels")
    rows, right, truths, preds = [], [[], []], [], [[], []]
    for data in sets:
        clips = decode_eval_set(read_records(resolve_data(data, cache_dir)), models[0].manifest.clip, labels)
        truth = np.array([c.label for c in clips])
        ok = []
        for i, m in enumerate(models):
            pred = action_probabilities(m, clips).argmax(1)
            preds[i].append(pred)
            ok.append(pred == truth)
            right[i].append(ok[-1])
        truths.append(truth)
        only = [int((ok[0] & ~ok[1]).sum()), int((ok[1] & ~ok[0]).sum())]
        rows.append({"data": data, "clips": len(truth), "accuracy": [float(o.mean()) for o in ok],
                     "only_right": only, "mcnemar_p": mcnemar_p(*only)})
    a, b = (np.concatenate(r) for r in right)
    only = [int((a & ~b).sum()), int((b & ~a).sum())]
    truth = np.concatenate(truths)
    return {"stores": stores, "versions": [m.manifest.version for m in models], "sets": rows,
            "all": {"clips": len(a), "accuracy": [float(a.mean()), float(b.mean())], "only_right": only,
                    "mcnemar_p": mcnemar_p(*only)},
            "lost_classes": [lost_classes(truth, np.concatenate(p), labels) for p in preds]}


def markdown(r: dict) -> str:
    a, b = r["stores"]
    lines = [f"A = `{a}` (v{r['versions'][0]}), B = `{b}` (v{r['versions'][1]})", "",
             "| clips | n | accuracy A | accuracy B | only A right | only B right | McNemar p |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in [*r["sets"], {"data": "all", **r["all"]}]:
        lines.append(f"| {row['data']} | {row['clips']} | {row['accuracy'][0]:.4f} | {row['accuracy'][1]:.4f} | "
                     f"{row['only_right'][0]} | {row['only_right'][1]} | {row['mcnemar_p']:.3f} |")
    for name, lost in zip("AB", r["lost_classes"], strict=True):
        lines.append("")
        lines.append(f"Classes {name} mostly misses: " + (json.dumps(lost) if lost else "none"))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store_a")
    p.add_argument("store_b")
    p.add_argument("--data", action="append", help=f"a set of unseen clips (repeatable; default {SETS})")
    p.add_argument("--cache-dir", default="data/synthav")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compare_action"))
    args = p.parse_args()
    result = compare([args.store_a, args.store_b], args.data or SETS, args.cache_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    write_report(out, "compare_action.py", None, text)
    print(text)


if __name__ == "__main__":
    main()
