"""Merge ``noise-benchmark`` result files into one JSON, one markdown table and one plot.

    python benchmarks/noise_report.py runs/noise/bench_key.json runs/noise/bench_zero.json \
        --out benchmarks/results/noise_bench
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.action.noise_benchmark import ABLATIONS, METHOD_NAMES, markdown_table, plot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True, help="path stem: writes .json, .md and .png")
    p.add_argument("--rename", action="append", default=[], help="FILE=METHOD: rename that file's ntl rows")
    args = p.parse_args()
    renames = dict(r.split("=", 1) for r in args.rename)
    results, sources = [], []
    for path in args.inputs:
        data = json.loads(Path(path).read_text())
        for r in data["results"]:
            if path in renames and r["method"] == "ntl":
                r = {**r, "method": renames[path]}
            results.append({**r, "source": path})
        sources.append({"file": path, "settings": data.get("settings")})
    known = [*METHOD_NAMES, *ABLATIONS]
    methods = [m for m in known if any(r["method"] == m for r in results)]
    methods += sorted({r["method"] for r in results} - set(known))
    table = markdown_table(results, methods)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"sources": sources, "results": results, "table": table},
                                                   indent=1))
    out.with_suffix(".md").write_text(table + "\n")
    plot(results, [m for m in methods if m in METHOD_NAMES], out.with_suffix(".png"))
    print(table)


if __name__ == "__main__":
    main()
