#!/usr/bin/env bash
# The paper's studies on digits (issue 3), exactly as run for reports/. Each step is one command; run from the
# repository root. Sample counts are equal across the rows of each table. CPU: 2 cores shared, one thread per job.
#
#   scripts/run_studies.sh train      # the two extra p_uncond runs (the p_uncond = 0.1 run is runs/digits)
#   scripts/run_studies.sh classifier # the noisy classifier for the classifier-guidance baseline
#   scripts/run_studies.sh main       # trade-off sweep of the main model (also Table 1's p_uncond = 0.1 row)
#   scripts/run_studies.sh puncond    # Table 1 analogue: p_uncond 0.2 and 0.5
#   scripts/run_studies.sh steps      # Table 2 analogue: T in {16, 32, 64, 128, 256} at w in {0, 0.3, 4}
#   scripts/run_studies.sh cg         # classifier guidance at the main sweep's n and steps
#   scripts/run_studies.sh short      # the same sweep on a model trained for 600 steps only (not yet at the floor)
#   scripts/run_studies.sh implicit   # implicit classifier vs exact, gmm2d
#   scripts/run_studies.sh reports    # write reports/*.md from the results
set -euo pipefail
export OMP_NUM_THREADS=1
CFG=".venv/bin/cfgdiff"
W="0,0.1,0.2,0.3,0.5,1,2,4"
N=500           # samples per w in the w sweeps (equal in every row; reduced for the 2-core CPU budget)
T=32            # sampling steps for the w sweeps (reduced from the paper's 128+ for the CPU budget)
NS=200          # samples per cell in the steps table
OUT=runs/studies

case "${1:-}" in
  train)
    $CFG train --data digits --run-dir runs/digits-p0.2 --p-uncond 0.2 &
    $CFG train --data digits --run-dir runs/digits-p0.5 --p-uncond 0.5 &
    wait ;;
  classifier)
    $CFG train-classifier --data digits --run-dir runs/digits-classifier ;;
  main)
    $CFG eval runs/digits --w $W --n $N --steps $T --out $OUT/p0.1 ;;
  puncond)
    $CFG eval runs/digits-p0.2 --w $W --n $N --steps $T --out $OUT/p0.2 &
    $CFG eval runs/digits-p0.5 --w $W --n $N --steps $T --out $OUT/p0.5 &
    wait ;;
  steps)
    for steps in 16 32 64 128 256; do
      $CFG eval runs/digits --w 0,0.3,4 --n $NS --steps $steps --out $OUT/steps-T$steps
    done ;;
  cg)
    $CFG eval runs/digits --w $W --n $N --steps $T --guidance classifier --classifier runs/digits-classifier \
      --out $OUT/classifier ;;
  short)
    $CFG train --data digits --run-dir runs/digits-600 --steps 600
    $CFG eval runs/digits-600 --w $W --n $N --steps $T --out $OUT/short-600 ;;
  implicit)
    [ -f runs/gmm2d/checkpoint.safetensors ] || $CFG train --data gmm2d --run-dir runs/gmm2d
    .venv/bin/python scripts/implicit_classifier.py --run-dir runs/gmm2d ;;
  reports)
    .venv/bin/python scripts/write_reports.py --studies $OUT --out reports ;;
  *)
    sed -n '2,15p' "$0"; exit 2 ;;
esac
