#!/usr/bin/env bash
# The tuned-methods study: every guidance method tuned by `cfgdiff tune` with the same budget (the same trials, the
# same N schedule, the same seeds), each winner re-scored on fresh seeds, then one leaderboard and the
# precision/recall fronts of CFG, autoguidance, APG and CFG++ on one plot (scripts/tune_leaderboard.py).
#
#   scripts/tune_study.sh                      # digits (the embedded data set): trains the runs it needs first
#   RUN=runs/fmnist WEAK=runs/fmnist-weak FEATURES="--features runs/fmnist-features" OUT=reports/tune_fmnist \
#       scripts/tune_study.sh                  # Fashion-MNIST, with its trained runs and feature network
set -euo pipefail
CFGDIFF=${CFGDIFF:-.venv/bin/cfgdiff}
PYTHON=${PYTHON:-.venv/bin/python}
RUN=${RUN:-runs/digits}
WEAK=${WEAK:-runs/digits-weak}   # autoguidance's weaker model: an early checkpoint of the same network
OUT=${OUT:-reports/tune_digits}
FEATURES=${FEATURES:-}
TRIALS=${TRIALS:-20}
FRONT_TRIALS=${FRONT_TRIALS:-10}  # two-objective tunes are not pruned: every trial runs at FRONT_N
FRONT_N=${FRONT_N:-500}
BUDGET=${BUDGET:---trials $TRIALS --n-min 125 --n-max 1000 --final-n 4000 --sampler dpmpp_2m --steps 16 --seed 0}
[ -f "$RUN/checkpoint.safetensors" ] || $CFGDIFF train --data digits --run-dir "$RUN" --no-progress
[ -f "$WEAK/checkpoint.safetensors" ] || $CFGDIFF train --data digits --steps 500 --run-dir "$WEAK" --no-progress
for method in cfg rescale thresholding apg cfgpp cfg-zero auto; do
  extra=()
  [ "$method" = auto ] && extra=(--guide-run "$WEAK")
  # shellcheck disable=SC2086
  $CFGDIFF tune "$RUN" --guidance "$method" --objective fid $BUDGET $FEATURES "${extra[@]}" --no-progress \
    --out "$OUT/fid/$method"
done
for method in cfg auto apg cfgpp; do
  extra=()
  [ "$method" = auto ] && extra=(--guide-run "$WEAK")
  # shellcheck disable=SC2086
  $CFGDIFF tune "$RUN" --guidance "$method" --objective pareto:precision,recall --trials "$FRONT_TRIALS" \
    --n-min "$FRONT_N" --n-max "$FRONT_N" --final-n 4000 --final-points 3 --sampler dpmpp_2m --steps 16 --seed 0 \
    $FEATURES "${extra[@]}" --no-progress --out "$OUT/front/$method"
done
$PYTHON scripts/tune_leaderboard.py --tunes "$OUT/fid" --fronts "$OUT/front" --out "$OUT" \
  --title "Guidance methods tuned with the same budget ($RUN)" --command "scripts/tune_study.sh (RUN=$RUN)"
