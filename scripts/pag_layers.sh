#!/usr/bin/env bash
# Which layers should PAG and skip-layer guidance perturb by default? FID of each layer choice on digits.
# Usage: scripts/pag_layers.sh RUN_DIR OUT_DIR [SCALE]   (RUN_DIR: `cfgdiff train --data digits --run-dir RUN_DIR`)
# N = 500 per w, 16 dpmpp_2m steps, w in {0, 1} (the CFG term), perturbation scale s = SCALE (default 1); the
# layers are those `cfgdiff info RUN_DIR` lists for the default digits U-Net; one eval at a time.
set -euo pipefail
run=${1:?RUN_DIR}; out=${2:?OUT_DIR}; scale=${3:-1}
common=(--w 0,1 --n 500 --steps 16 --sampler dpmpp_2m --bootstrap 100 --grid-per-class 1 --no-progress)
[ -e "$out/cfg/results.json" ] || python -m cfgdiff eval "$run" "${common[@]}" --out "$out/cfg"
for layer in down.4 mid.0 up.0 up.1; do
  python -m cfgdiff eval "$run" "${common[@]}" --guidance pag --pag-scale "$scale" --pag-layers "$layer" \
    --out "$out/pag-s$scale-$layer"
done
for layer in down.0 mid.0 mid.1; do
  python -m cfgdiff eval "$run" "${common[@]}" --guidance skip-layer --slg-scale "$scale" --skip-layers "$layer" \
    --out "$out/skip-layer-s$scale-$layer"
done
