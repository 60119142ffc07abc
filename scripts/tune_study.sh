#!/usr/bin/env bash
# The tuned-methods study: every guidance method tuned by `cfgdiff tune` with the same budget (the same trials, the
# same N schedule, the same seeds), each winner re-scored on fresh seeds, then one leaderboard and the
# precision/recall fronts of CFG, autoguidance, APG and CFG++ on one plot (scripts/tune_leaderboard.py).
#
#   scripts/tune_study.sh                      # digits (the embedded data set): trains the runs it needs first
#   RUN=runs/fmnist WEAK=runs/fmnist-weak FEATURES="--features runs/fmnist-features" OUT=reports/tune_fmnist \
#       scripts/tune_study.sh                  # Fashion-MNIST, with its trained runs and feature network
#
# The budget is the same for every method and set by TRIALS, N_MIN, N_MAX, FINAL_N (and FRONT_TRIALS, FRONT_N,
# FRONT_POINTS for the fronts); PRECISION sets the network's form for every trial (fp32 by default; bf16 gives the
# same figures within their spread, reports/bf16_quality.md); METHODS and FRONT_METHODS choose the methods.
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
FRONT_POINTS=${FRONT_POINTS:-3}
N_MIN=${N_MIN:-125}
N_MAX=${N_MAX:-1000}
FINAL_N=${FINAL_N:-4000}
PRECISION=${PRECISION:-fp32}
METHODS=${METHODS:-cfg rescale thresholding apg cfgpp cfg-zero auto}
FRONT_METHODS=${FRONT_METHODS:-cfg auto apg cfgpp}
SAMPLING="--sampler dpmpp_2m --steps 16 --seed 0 --precision $PRECISION"
BUDGET=${BUDGET:---trials $TRIALS --n-min $N_MIN --n-max $N_MAX --final-n $FINAL_N $SAMPLING}
[ -f "$RUN/checkpoint.safetensors" ] || $CFGDIFF train --data digits --run-dir "$RUN" --no-progress
[ -f "$WEAK/checkpoint.safetensors" ] || $CFGDIFF train --data digits --steps 500 --run-dir "$WEAK" --no-progress
for method in $METHODS; do
  extra=()
  [ "$method" = auto ] && extra=(--guide-run "$WEAK")
  # shellcheck disable=SC2086
  $CFGDIFF tune "$RUN" --guidance "$method" --objective fid $BUDGET $FEATURES "${extra[@]}" --no-progress \
    --out "$OUT/fid/$method"
done
for method in $FRONT_METHODS; do
  extra=()
  [ "$method" = auto ] && extra=(--guide-run "$WEAK")
  # shellcheck disable=SC2086
  $CFGDIFF tune "$RUN" --guidance "$method" --objective pareto:precision,recall --trials "$FRONT_TRIALS" \
    --n-min "$FRONT_N" --n-max "$FRONT_N" --final-n "$FINAL_N" --final-points "$FRONT_POINTS" $SAMPLING \
    $FEATURES "${extra[@]}" --no-progress --out "$OUT/front/$method"
done
$PYTHON scripts/tune_leaderboard.py --tunes "$OUT/fid" --fronts "$OUT/front" --out "$OUT" \
  --title "Guidance methods tuned with the same budget ($RUN)" --command "RUN=$RUN WEAK=$WEAK TRIALS=$TRIALS N_MIN=$N_MIN N_MAX=$N_MAX FINAL_N=$FINAL_N FRONT_TRIALS=$FRONT_TRIALS FRONT_N=$FRONT_N FRONT_POINTS=$FRONT_POINTS PRECISION=$PRECISION METHODS='$METHODS' FEATURES='$FEATURES' scripts/tune_study.sh"
