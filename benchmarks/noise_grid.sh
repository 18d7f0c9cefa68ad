#!/usr/bin/env sh
# Noisy labels x noisy correspondence: NTL against CE, GCE, SCE and Co-teaching (issue #4).
# Writes benchmarks/results/noise_*.json, a markdown table beside each (.md) and a PNG plot (.png).
#
#   sh benchmarks/noise_grid.sh key        # 40 % sym labels + 20 % correspondence, every method
#   sh benchmarks/noise_grid.sh zero       # no noise: CE and NTL
#   sh benchmarks/noise_grid.sh ablation   # NTL with one component off, 40 % sym + 20 % corr.
#   sh benchmarks/noise_grid.sh grid       # the full grid (15 cells x 5 methods; hours on a CPU)
#
# SEEDS (default 1) seeds per cell; 40 epochs, long enough for plain CE to reach its best and then memorise
# the wrong labels (at 16 no method had converged); the "bench" backbone is av_action_small's layout at 4 fps, 8 frames,
# 32x32 (see training/noise_benchmark.py); the data are the first 800 clips of SynthAV seed 1 (train pool)
# and its last 400 (clean test).
set -eu
SEEDS=${SEEDS:-1}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
COMMON="--n-train 800 --n-test 400 --epochs 40 --seeds $SEEDS --model bench --threads 1 --resume"
case "${1:-key}" in
  key) $PY -m training noise-benchmark --cells sym:0.4:0.2 --methods ce,gce,sce,coteaching,ntl $COMMON \
         --json "$OUT/noise_key.json" ;;
  zero) $PY -m training noise-benchmark --cells sym:0:0 --methods ce,ntl $COMMON --json "$OUT/noise_zero.json" ;;
  ablation) $PY -m training noise-benchmark --cells sym:0.4:0.2 $COMMON --json "$OUT/noise_ablation.json" \
              --methods ce,ntl,ntl-no-phase1,ntl-no-estimation,ntl-no-mute,ntl-no-category,ntl-no-trust,ntl-no-correction,ntl-no-given ;;
  grid) $PY -m training noise-benchmark --label-noise 0,0.2,0.4,0.6 --corr-noise 0,0.2,0.4 \
          --methods ce,gce,sce,coteaching,ntl $COMMON --json "$OUT/noise_grid.json"
        $PY -m training noise-benchmark --label-noise 0.4 --label-noise-type asym --corr-noise 0,0.2,0.4 \
          --methods ce,gce,sce,coteaching,ntl $COMMON --json "$OUT/noise_grid.json" ;;
  *) echo "usage: $0 key|zero|ablation|grid" >&2; exit 2 ;;
esac
