#!/usr/bin/env bash
# The issue-3 comparison, end to end, from the repository root (after `make venv`):
#   1. the default synthetic benchmark (generated if missing);
#   2. per seed: MSN frame pretraining (short) and its frame-mean ONNX encoder;
#   3. the results table: untrained, MSN frame-mean, kNN bags + multi-positive loss,
#      the method (temporal temperature bags + MIL-NCE), the method with MSN-initialised
#      frames, the supervised upper bound — each seed, mean ± std, + val mAP over epochs;
#   4. the bag-noise sweep: datasets with more polyps per procedure and more
#      interleaving (more bag members of another polyp), their measured bag noise,
#      and the method's MIL-NCE against the plain multi-positive loss on the same bags.
# Finished runs and tables are reused (delete OUT to start over). Environment overrides:
#   OUT (var/bench/training), DATA (var/data/synth), SEEDS ("0 1 2"),
#   SWEEP ("1,3,0.0 3,6,0.5 6,9,0.8": polyps low,high,interleave), SWEEP_SEEDS ("0 1").
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-var/bench/training}
DATA=${DATA:-var/data/synth}
SEEDS=${SEEDS:-"0 1 2"}
SWEEP=${SWEEP:-"1,3,0.0 3,6,0.5 6,9,0.8"}
SWEEP_SEEDS=${SWEEP_SEEDS:-"0 1"}
CACHE=$OUT/crop_cache
start=$(date +%s)
stamp() { echo "[training_tables $(($(date +%s) - start)) s] $*"; }

[ -f "$DATA/annotations/instances_test.json" ] || "$BIN/polypindex" synth --out "$DATA" --seed 0

for s in $SEEDS; do
  m=$OUT/msn/seed$s
  if [ ! -f "$m/frame_mean.onnx" ]; then
    stamp "MSN pretraining, seed $s"
    "$BIN/polypindex" pretrain-frames --data "$DATA" --out "$m" --config msn_resnet18 \
      --set seed="$s" --set epochs=4 --set max_steps_per_epoch=25 --set cache_dir="$CACHE"
    "$BIN/polypindex" export-frame-mean "$m/msn.pt" --out "$m/frame_mean.onnx"
  fi
done

stamp "results table, seeds $SEEDS"
# shellcheck disable=SC2086  # SEEDS is a list
[ -f "$OUT/table/results_table.json" ] || "$BIN/python" -m polypindex.benchmarks.results_table --data "$DATA" --out "$OUT/table" --seeds $SEEDS --reuse \
  --row self_supervised=demo \
  --row knn_multipositive=knn_multipositive \
  --row msn_init=msn_init,init_frame_encoder="$OUT/msn/seed{seed}/msn.pt" \
  --row supervised_upper_bound=supervised \
  --model msn_frame_mean="$OUT/msn/seed{seed}/frame_mean.onnx"

for level in $SWEEP; do
  IFS=, read -r low high il <<< "$level"
  name=polyps${low}-${high}_interleave$il
  d=$OUT/sweep/data_$name
  [ -f "$d/annotations/instances_test.json" ] ||
    "$BIN/polypindex" synth --out "$d" --seed 0 --polyps "$low" "$high" --interleave "$il"
  [ -f "$OUT/sweep/bag_noise_$name.json" ] ||
    "$BIN/python" -m polypindex.benchmarks.bag_noise --data "$d" --out "$OUT/sweep/bag_noise_$name.json"
  stamp "noise sweep, $name"
  # shellcheck disable=SC2086
  [ -f "$OUT/sweep/table_$name/results_table.json" ] ||
    "$BIN/python" -m polypindex.benchmarks.results_table --data "$d" --out "$OUT/sweep/table_$name" \
    --seeds $SWEEP_SEEDS --reuse \
    --row mil_nce=demo \
    --row plain_multi_positive=demo,loss=multi_positive
done
stamp "done"
