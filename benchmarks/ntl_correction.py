"""NTL's per-epoch correction step at scale: seconds and peak memory of one step on random features, chunked
(as ``train_ntl`` runs it) against the dense O(N^2) computation as the reference.

    python -m benchmarks.ntl_correction [--n 200000] [--dense-n 20000] [--repeat 3] [--dim 256] [--classes 16]
        [--k 20] [--device cpu|cuda] [--threads 2] [--out benchmarks/results/ntl_correction.json]

(run from the repository root). One step is what ``train_ntl`` does over the whole training set per epoch:
per-pair InfoNCE over the whole set (every other clip a negative), the 2-component mixture that turns it into
pair weights, weighted k-means (2 clusters per class) and its prototypes, label trust (one loss mixture per
given class), kNN votes (k neighbours in the classifier's features) and the corrected labels.

Each measurement runs in a fresh subprocess (after a warm-up step on 512 clips), so that its peak is its own:
the chunked step at ``--n`` once, and at ``--dense-n`` ``--repeat`` times alternating with the dense step at
``--dense-n`` (the pair InfoNCE as ``cross_modal_nce`` on the whole set, the kNN from one N x N similarity
block); of those the fastest run of each is kept, since the machine may be shared (the 1-minute load average
is recorded). Peak memory is the process's peak resident set (``VmHWM``, reset with ``/proc/self/clear_refs``
once the features exist, so it is the step's peak including its inputs; the whole-process ``ru_maxrss`` is
recorded too) or, on CUDA, ``torch.cuda.max_memory_allocated``. Features are random with class structure
(fixed seed): 40 % symmetric label noise, 20 % of the pairs given another clip's audio, so the step's outputs
can be scored as a sanity check. Writes JSON and a
markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from training.action.noisy import estimation as est
from training.action.noisy.losses import cross_modal_nce

ROOT = Path(__file__).resolve().parents[1]
TAU = 0.1  # NTLConfig.tau


def _status_mib(key: str) -> float:
    """A ``VmHWM``/``VmRSS`` line of /proc/self/status in MiB (nan where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def make_features(n: int, dim: int, classes: int, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random features with class structure: video ``v``, audio ``a`` (20 % of the pairs swapped among
    themselves), classifier features ``h`` (N, dim) float32, the classifier's per-clip loss ``ce`` on the given
    labels, given labels (40 % symmetric noise), clean labels and the swapped-pair mask."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, dim, generator=g)  # (K, D)
    v = centres[clean] + 2.0 * torch.randn(n, dim, generator=g)  # (N, D)
    a = 0.5 * v + 10.0 * torch.randn(n, dim, generator=g)  # weakly tied to its video: the mixture has work
    swapped = torch.randperm(n, generator=g)[: n // 5]
    a[swapped] = a[swapped[torch.randperm(len(swapped), generator=g)]]
    corr_noisy = torch.zeros(n, dtype=torch.bool)
    corr_noisy[swapped] = True
    h = centres[clean] + 4.0 * torch.randn(n, dim, generator=g)  # classes overlap: kNN is not trivial
    flip = torch.rand(n, generator=g) < 0.4
    given = torch.where(flip, (clean + torch.randint(1, classes, (n,), generator=g)) % classes, clean)
    ce = F.cross_entropy(h @ centres.T / dim**0.5, given, reduction="none")  # (N,)
    out = {"v": v, "a": a, "h": h, "ce": ce, "given": given, "clean": clean, "corr_noisy": corr_noisy}
    return {key: x.to(device) for key, x in out.items()}


def correction_step(f: dict[str, torch.Tensor], classes: int, k: int, dense: bool) -> tuple[dict, dict]:
    """One NTL correction step over the whole set; ``dense`` computes the two pairwise parts as N x N blocks.
    Returns (seconds per part, outputs)."""
    n = len(f["v"])
    sync = torch.cuda.synchronize if f["v"].is_cuda else (lambda: None)
    times: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        sync()
        t1 = time.perf_counter()
        times[name] = round(t1 - t0, 3)
        return t1

    t = time.perf_counter()
    with torch.inference_mode():
        if dense:
            losses = cross_modal_nce(f["v"], f["a"], TAU)  # (N, N) logits
        else:
            losses = est.pair_nce_losses(f["v"], f["a"], TAU)
        t = lap("pair_losses", t)
        w = est.gmm_clean_probability(losses)
        t = lap("pair_mixture", t)
        vn, an = est.l2_normalize(f["v"]), est.l2_normalize(f["a"])
        _, assign = est.kmeans(vn + an, 2 * classes, weights=w, seed=0, chunk=n if dense else 4096)
        proto_v, proto_a = est.cluster_sums(vn, assign, 2 * classes, w), est.cluster_sums(an, assign, 2 * classes, w)
        t = lap("kmeans_prototypes", t)
        trust = est.label_trust(f["ce"], classes, groups=f["given"])
        t = lap("label_trust", t)
        votes = est.knn_label_votes(f["h"], f["given"], classes, k, weights=w * trust + 1e-3,
                                    chunk=n if dense else 1024)
        t = lap("knn_votes", t)
        corrected, q, _ = est.corrected_labels(votes, f["given"])
        lap("corrected_labels", t)
    times["total"] = round(sum(times.values()), 3)
    outputs = {
        "corr_auc": round(est.roc_auc(1.0 - w, f["corr_noisy"]), 4),
        "given_label_accuracy": round(float((f["given"] == f["clean"]).double().mean()), 4),
        "knn_label_accuracy": round(float((corrected == f["clean"]).double().mean()), 4),
        "prototypes": list(proto_v.shape) + [int(proto_a.shape[0])],
    }
    return times, outputs


def measure_one(mode: str, n: int, dim: int, classes: int, k: int, device: str, threads: int, seed: int) -> dict:
    """One measurement, in this process (run it in a fresh one)."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    correction_step(make_features(512, dim, classes, seed + 1, dev), classes, k, dense=mode == "dense")  # warm-up
    f = make_features(n, dim, classes, seed, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    data_mib = _status_mib("VmRSS")
    reset = _reset_peak_rss()
    times, outputs = correction_step(f, classes, k, dense=mode == "dense")
    record = {
        "load_average_1min": round(os.getloadavg()[0], 2),
        "mode": mode, "n": n, "dim": dim, "classes": classes, "k": k, "device": device, "threads": threads,
        "seconds": times["total"], "parts_s": times,
        "data_rss_mib": round(data_mib, 1),  # resident once the features exist, before the step
        "peak_rss_mib": round(_status_mib("VmHWM"), 1) if reset else None,  # the step's peak, inputs included
        "process_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **outputs,
    }
    if dev.type == "cuda":
        record["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return record


def _run_child(mode: str, n: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.ntl_correction", "--one", mode, "--n", str(n), "--dim", str(args.dim),
           "--classes", str(args.classes), "--k", str(args.k), "--device", args.device, "--threads",
           str(args.threads), "--seed", str(args.seed)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _peak(r: dict) -> float:
    return r.get("cuda_peak_mib") or r["peak_rss_mib"] or r["process_maxrss_mib"]


def markdown(records: list[dict]) -> str:
    mem = "peak CUDA MiB" if "cuda_peak_mib" in records[0] else "peak RSS MiB"
    lines = [f"| step | N | seconds | {mem} | pair losses s | kNN s | k-means s | kNN label acc. | corr. AUC |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        p = r["parts_s"]
        lines.append(f"| {r['mode']} | {r['n']:,} | {r['seconds']:.1f} | {_peak(r):,.0f} | {p['pair_losses']:.1f} | "
                     f"{p['knn_votes']:.1f} | {p['kmeans_prototypes']:.1f} | {r['knn_label_accuracy']:.3f} | "
                     f"{r['corr_auc']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dense-n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each step at --dense-n; the fastest is kept")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ntl_correction.json")
    ap.add_argument("--one", choices=["chunked", "dense"], help=argparse.SUPPRESS)  # a child measurement
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.n, args.dim, args.classes, args.k, args.device, args.threads,
                                     args.seed)))
        return 0
    t0, load0 = time.perf_counter(), round(os.getloadavg()[0], 2)
    runs: dict[str, list[dict]] = {"chunked": [], "dense": []}
    for _ in range(args.repeat):  # alternating, so that a change of load hits both alike
        for mode in runs:
            runs[mode].append(_run_child(mode, args.dense_n, args))
            print(json.dumps(runs[mode][-1]), flush=True)
    small, dense = (min(runs[m], key=lambda r: r["seconds"]) | {"seconds_all": [r["seconds"] for r in runs[m]]}
                    for m in ("chunked", "dense"))
    big = _run_child("chunked", args.n, args)
    print(json.dumps(big), flush=True)
    records = [small, dense, big]
    ratio = {"time_dense_over_chunked": round(dense["seconds"] / small["seconds"], 2),
             "memory_dense_over_chunked": round(_peak(dense) / _peak(small), 2),
             "memory_step_over_data_dense": round(_peak(dense) / dense["data_rss_mib"], 2)
             if dense["data_rss_mib"] else None}
    n2_gib = 4 * args.n**2 / 2**30  # one float32 N x N matrix at --n, what the dense step would hold
    result = {
        "records": records, "dense_reference_at": args.dense_n, "ratio": ratio,
        "dense_matrix_gib_at_n": round(n2_gib, 1), "wall_s": round(time.perf_counter() - t0, 1),
        "load_average_1min": {"start": load0, "end": round(os.getloadavg()[0], 2)},  # the machine is shared
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(records)
    notes = (f"\nDense / chunked at N = {args.dense_n:,}: time x{ratio['time_dense_over_chunked']}, peak memory "
             f"x{ratio['memory_dense_over_chunked']}. One float32 N x N matrix at N = {args.n:,} would be "
             f"{n2_gib:,.0f} GiB. {args.device}, {args.threads} threads, D = {args.dim}, {args.classes} classes, "
             f"k = {args.k}.\n")
    args.out.with_suffix(".md").write_text(table + "\n" + notes)
    print(table + "\n" + notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
