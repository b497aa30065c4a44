#!/usr/bin/env bash
# Every method tuned under one budget (20 trials, at most 10 epochs), scored on a validation split, then the
# defaults and the tuned hyperparameters once each on the untouched split. MODEL=vit|resnet50, TRIALS, OUT.
# Writes $OUT/{tune.md,trials.csv,trials.png,tune.json,best-*.toml}; benchmarks/results/tune-$MODEL-quick/ keeps them.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-vit}
TRIALS=${TRIALS:-20}
OUT=${OUT:-runs/tune-$MODEL-quick}
python -m prunelora_keras.tune --model "$MODEL" --preset quick --method "${METHODS:-all}" --trials "$TRIALS" --out "$OUT"
mkdir -p "benchmarks/results/tune-$MODEL-quick"
cp "$OUT"/tune.md "$OUT"/trials.csv "$OUT"/trials.png "$OUT"/tune.json "$OUT"/best-*.toml "benchmarks/results/tune-$MODEL-quick/"
