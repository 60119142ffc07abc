#!/usr/bin/env bash
# The refactor check: the same `cfgdiff sample` and `cfgdiff eval` commands on one run, written to OUT, so two
# checkouts' outputs can be compared bit for bit (scripts/compare_outputs.py OUT_A OUT_B).
#
#   scripts/same_outputs.sh OUT RUN_DIR GUIDE_RUN_DIR     # with the checkout under test first on PYTHONPATH
#
# Six guided sample grids (every sampler; cfg, cfg++, apg with the interval, cfg-zero*, rescale, thresholding) and
# three evals (dpmpp_2m; the guidance interval; autoguidance with GUIDE_RUN_DIR), on CPU at 2 threads.
set -euo pipefail
OUT=$1 RUN=$2 GUIDE=$3
PY=${PYTHON:-python3}
C() { "$PY" -m cfgdiff "$@"; }
mkdir -p "$OUT"
export OMP_NUM_THREADS=2
C sample "$RUN" --w 0,1,3 --n-per-class 2 --steps 16 --seed 3 --out "$OUT/s1/grid.png" --no-progress > "$OUT/s1.log"
C sample "$RUN" --w=-0.5,0 --n-per-class 1 --steps 8 --sampler ddim --guidance cfgpp --seed 1 \
  --out "$OUT/s2/grid.png" --no-progress > "$OUT/s2.log"
C sample "$RUN" --w 2 --n-per-class 1 --steps 6 --sampler heun --guidance apg --interval 0.3,5 \
  --out "$OUT/s3/grid.png" --no-progress > "$OUT/s3.log"
C sample "$RUN" --w 2 --n-per-class 1 --steps 10 --sampler dpmpp_3m --guidance cfg-zero \
  --out "$OUT/s4/grid.png" --no-progress > "$OUT/s4.log"
C sample "$RUN" --w 1 --n-per-class 1 --steps 10 --sampler dpmpp_2m_sde --guidance rescale \
  --out "$OUT/s5/grid.png" --no-progress > "$OUT/s5.log"
C sample "$RUN" --w 1 --n-per-class 1 --steps 10 --sampler ancestral --guidance thresholding \
  --out "$OUT/s6/grid.png" --no-progress > "$OUT/s6.log"
C eval "$RUN" --w 0,1 --n 60 --steps 8 --sampler dpmpp_2m --bootstrap 10 --out "$OUT/e1" --no-progress \
  > "$OUT/e1.log" 2>&1
C eval "$RUN" --w 0,2 --n 40 --steps 8 --interval 0.3,5 --bootstrap 10 --out "$OUT/e2" --no-progress \
  > "$OUT/e2.log" 2>&1
C eval "$RUN" --w 0,1 --n 40 --steps 6 --guidance auto --guide-run "$GUIDE" --bootstrap 0 --out "$OUT/e3" \
  --no-progress > "$OUT/e3.log" 2>&1
echo "wrote $OUT"
