"""On/off-screen separation: the shipped audio-visual model against its baseline and ablation, each scored
through ``python -m training evaluate separation`` (the published ONNX graph, whole tracks by overlap-add).

    python benchmarks/separation_table.py \
        --model av=model_store/models --model still=runs/stores/still --model pit=runs/stores/audio_only \
        --data synthetic=synthav:seed=1000,n=100,kind=speech \
        --data same_pitch=synthav:seed=1001,n=100,kind=speech_same_pitch \
        --data espeak=data/speech-espeak-seed1002-n100 \
        --out benchmarks/results/separation.json

Writes the JSON records and prints (and writes beside them) a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

from training.cli import main as cli


def _pairs(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


def evaluate(root: str, data: str, cache_dir: str) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli(["evaluate", "separation", "--root", root, "--data", data, "--cache-dir", cache_dir, "-q"])
    if code != 0:
        raise SystemExit(f"evaluate failed for {root} on {data}")
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def variant_table(results: dict[str, dict[str, dict]]) -> str:
    """SI-SDRi on / off per variant (plain, same pitch, two faces) and the share of clips where both tracks beat
    the mixture, one row per (model, data)."""
    variants = sorted({v for per in results.values() for r in per.values() for v in r.get("by_variant", {})})
    rows = ["| model | data | " + " | ".join(f"{v}: SI-SDRi on / off" for v in variants) + " | both beat the mix |",
            "| --- | --- |" + " --- |" * (len(variants) + 1)]
    for name, per_data in results.items():
        for d, r in per_data.items():
            cells = [f"{r['by_variant'][v]['si_sdri_on']:.2f} / {r['by_variant'][v]['si_sdri_off']:.2f}"
                     if v in r.get("by_variant", {}) else "-" for v in variants]
            share = r.get("beats_mix_both")
            rows.append(f"| {name} | {d} | " + " | ".join(cells) + f" | {'-' if share is None else f'{share:.0%}'} |")
    return "\n".join(rows)


def table(results: dict[str, dict[str, dict]]) -> str:
    datas = list(next(iter(results.values())))
    head = "| model | " + " | ".join(f"{d}: SI-SDRi on / off | {d}: SDR on / off" for d in datas) + " |"
    rule = "| --- |" + " --- | --- |" * len(datas)
    rows = [head, rule]
    for name, per_data in results.items():
        cells = []
        for d in datas:
            r = per_data[d]
            cells += [f"{r['si_sdri_on']:.2f} / {r['si_sdri_off']:.2f}", f"{r['sdr_on']:.2f} / {r['sdr_off']:.2f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="NAME=STORE_ROOT (its production separation)")
    p.add_argument("--data", action="append", required=True, help="NAME=DATA (synthav spec or directory)")
    p.add_argument("--cache-dir", default="data/synthav")
    p.add_argument("--out", default="benchmarks/results/separation.json")
    args = p.parse_args()
    models, datas = _pairs(args.model), _pairs(args.data)
    results = {m: {d: evaluate(root, spec, args.cache_dir) for d, spec in datas.items()} for m, root in models.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"models": models, "data": datas, "results": results}, indent=2))
    md = table(results) + "\n\n" + variant_table(results)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
