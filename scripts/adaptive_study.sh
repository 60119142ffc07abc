#!/usr/bin/env bash
# What do adaptive guidance and LinearAG save, and what do they cost in FID? Digits, one eval at a time.
# Usage: scripts/adaptive_study.sh RUN_DIR OUT_DIR   (writes reports/adaptive_guidance.md)
#   (RUN_DIR: `cfgdiff train --data digits --run-dir RUN_DIR`)
# N = 1000 per w, 16 dpmpp_2m steps, the same seeds for every method; CFG at w = 0 (the conditional model, 16 NFE),
# 0.5 and 1 (32 NFE) bound the cheap methods, each at w = 1: adaptive (gamma), LinearAG (f), and guidance intervals
# (guided only at high noise) that skip the unconditional pass on the late steps.
# Another data set: N=500 EXTRA="--features runs/fmnist-features" REPORT=reports/adaptive_guidance_fmnist.md
# PRECISION=bf16: every network call of both passes (eval and sample) in bf16 autocast (default fp32)
set -euo pipefail
run=${1:?RUN_DIR}; out=${2:?OUT_DIR}; n=${N:-1000}; report=${REPORT:-reports/adaptive_guidance.md}
precision=${PRECISION:-fp32}
read -r -a extra <<< "${EXTRA:-}"
common=(--n "$n" --steps 16 --sampler dpmpp_2m --bootstrap 100 --grid-per-class 1 --no-progress --precision "$precision"
        "${extra[@]}")
# each setting twice: scored by eval, and drawn by sample (same seed, so sample i starts from the same noise under
# every setting) for the paired distance of its samples to plain CFG's
ev() {
  local name=$1; shift
  [ -e "$out/$name/results.json" ] || python -m cfgdiff eval "$run" "${common[@]}" "$@" --out "$out/$name"
  [ -e "$out/samples/$name.npz" ] || python -m cfgdiff sample "$run" --n-per-class "$((n / 10))" --steps 16 --sampler dpmpp_2m \
    --precision "$precision" --no-progress "$@" --out "$out/samples/$name.png"
}
ev cfg --w 0,0.5,1
for gamma in 0.999 0.9995 0.9998; do ev "adaptive-$gamma" --w 1 --guidance adaptive --adaptive-gamma "$gamma"; done
for f in 0.25 0.5 0.75; do ev "linear-ag-$f" --w 1 --guidance linear-ag --linear-ag-full "$f"; done
for lo in 2.9 1.0; do ev "interval-$lo" --w 1 --interval "$lo,1e5"; done
python scripts/adaptive_report.py "$out" --out "$report" \
  --command "N=$n PRECISION=$precision EXTRA=\"${EXTRA:-}\" scripts/adaptive_study.sh $run $out"
