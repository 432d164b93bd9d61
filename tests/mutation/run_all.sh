#!/bin/bash
# The mutation run recorded in SCORES.md, end to end (≈ 1 h on 2 shared cores):
#   "before": each module's seeded sample (targets.toml `sample`), grown step by step to the
#   sizes below (each --extend-to draws with its own seed, so the same steps give the same set);
#   "after": the survivors re-run with the oracle tests first; then the planted mutations of
#   issue 17 and a check that every killing test passes on the unmutated tree.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OPENBLAS_NUM_THREADS=1
M="nice -n 10 python tests/mutation/mutate.py"
STEPS="curvature:12,16 igr:10 igr_terms:7 egr:6 kernels:8 double_descent:6 probes:5,8
       dynamics_discrete:4 dynamics_sde:4,7 dynamics_sdcp:4,7 dynamics_central:2,4
       dynamics_flows:2 dynamics_base:1 measures:10 correlation:10"
for spec in $STEPS; do
  m=${spec%%:*}
  $M "$m" --no-baseline                 # before: the sample of targets.toml
  IFS=, read -ra sizes <<< "${spec##*:}"
  for n in "${sizes[@]}"; do $M "$m" --extend-to "$n" --no-baseline; done
  $M "$m" --label after --rerun-survivors before --no-baseline
done
$M --planted
$M --verify --label after
