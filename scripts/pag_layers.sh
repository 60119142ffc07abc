#!/usr/bin/env bash
# Which layers should PAG and skip-layer guidance perturb by default? FID of each layer choice on digits.
# Usage: scripts/pag_layers.sh RUN_DIR OUT_DIR [SCALE]   (RUN_DIR: `cfgdiff train --data digits --run-dir RUN_DIR`)
# N = 500 per w, 16 dpmpp_2m steps, w in {0, 1} (the CFG term), perturbation scale s = SCALE (default 1); the
# layers are those `cfgdiff info RUN_DIR` lists for the default digits U-Net; one eval at a time.
# Another network: PAG_LAYERS="..." SLG_LAYERS="..." (from its `cfgdiff info`), and EXTRA="--features DIR" for its
# feature network, e.g. on Fashion-MNIST (the 28x28 preset has the digits network's layer names):
#   EXTRA="--features runs/fmnist-features" scripts/pag_layers.sh runs/fmnist-10min runs/pag-fmnist 3
set -euo pipefail
run=${1:?RUN_DIR}; out=${2:?OUT_DIR}; scale=${3:-1}
read -r -a extra <<< "${EXTRA:-}"
common=(--w 0,1 --n 500 --steps 16 --sampler dpmpp_2m --bootstrap 100 --grid-per-class 1 --no-progress "${extra[@]}")
[ -e "$out/cfg/results.json" ] || python -m cfgdiff eval "$run" "${common[@]}" --out "$out/cfg"
for layer in ${PAG_LAYERS:-down.4 mid.0 up.0 up.1}; do
  python -m cfgdiff eval "$run" "${common[@]}" --guidance pag --pag-scale "$scale" --pag-layers "$layer" \
    --out "$out/pag-s$scale-$layer"
done
for layer in ${SLG_LAYERS:-down.0 mid.0 mid.1}; do
  python -m cfgdiff eval "$run" "${common[@]}" --guidance skip-layer --slg-scale "$scale" --skip-layers "$layer" \
    --out "$out/skip-layer-s$scale-$layer"
done
