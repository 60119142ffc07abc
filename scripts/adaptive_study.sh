#!/usr/bin/env bash
# What do adaptive guidance and LinearAG save, and what do they cost in FID? Digits, one eval at a time.
# Usage: scripts/adaptive_study.sh RUN_DIR OUT_DIR   (RUN_DIR: `cfgdiff train --data digits --run-dir RUN_DIR`)
# N = 1000 per w, 16 dpmpp_2m steps, the same seeds for every method; CFG at w = 0 (the conditional model, 16 NFE)
# and w = 1 (32 NFE) bound the cheap methods, each at w = 1: adaptive (gamma), LinearAG (f), and a guidance interval
# that also skips the unconditional pass on the late steps.
set -euo pipefail
run=${1:?RUN_DIR}; out=${2:?OUT_DIR}
common=(--n 1000 --steps 16 --sampler dpmpp_2m --bootstrap 100 --grid-per-class 1 --no-progress)
ev() { local name=$1; shift; [ -e "$out/$name/results.json" ] || python -m cfgdiff eval "$run" "${common[@]}" "$@" --out "$out/$name"; }
ev cfg --w 0,1
for gamma in 0.999 0.9995; do ev "adaptive-$gamma" --w 1 --guidance adaptive --adaptive-gamma "$gamma"; done
for f in 0.25 0.5 0.75; do ev "linear-ag-$f" --w 1 --guidance linear-ag --linear-ag-full "$f"; done
ev interval-2.9 --w 1 --interval 2.9,1e5
