#!/usr/bin/env bash
# Issue 13's experiment: every class forgotten in its own run, `cpu` preset, seed 0, real CIFAR-10.
# For each model: the paper's five paradigms with --forget-each, then Pruned LoRA again with the
# classifier kept out of the pruning targets (ViT: unlearn.prune_classifier=false) or put into them
# (ResNet: =true, the reference prunes only its convs), from the same original and Retrain models.
# Logs and folded results go to benchmarks/results/forget-each-<model>*; the README's per-class
# table comes from benchmarks/forget_each_table.py.
# EPOCHS (e.g. 10) restricts the unlearning epoch columns (default: the preset's 5,10); RUNS is the
# folder of the run folders (default runs/); RUN the command (default: python -m prunelora_keras.run).
#   DATA=../shared/data/cifar10-jpeg.tar.gz CLASSES=all bash benchmarks/forget_each.sh vit
#   CLASSES=0,2,4,6,8 EPOCHS=10 bash benchmarks/forget_each.sh resnet50
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
classes=${CLASSES:-all}
epochs=()
[ -n "${EPOCHS:-}" ] && epochs=(--epochs "$EPOCHS")
res=benchmarks/results
runs=${RUNS:-runs}
read -r -a run <<< "${RUN:-python -m prunelora_keras.run}"
mkdir -p "$res"
for model in "$@"; do
  case "$model" in
    vit) variant="unlearn.prune_classifier=false"; tag=nohead ;;
    *) variant="unlearn.prune_classifier=true"; tag=head ;;
  esac
  main=$runs/cpu-$model-each
  alt=$runs/cpu-$model-each-$tag
  start=$(date +%s)
  "${run[@]}" --model "$model" --preset cpu --data-dir "$data" --forget-each "$classes" \
    "${epochs[@]}" --out "$main" > "$res/forget-each-$model.log" 2>&1
  # the variant reuses the same original and Retrain checkpoints (hard links: no copies, no retraining)
  mkdir -p "$alt/checkpoints"
  ln -f "$main"/checkpoints/original-* "$alt/checkpoints/"
  for dir in "$main"/class*; do
    c=$(basename "$dir")
    mkdir -p "$alt/$c/checkpoints"
    ln -f "$dir"/checkpoints/retrain-* "$alt/$c/checkpoints/"
  done
  "${run[@]}" --model "$model" --preset cpu --data-dir "$data" --forget-each "$classes" \
    "${epochs[@]}" --paradigms retrain,pruned_lora --set "$variant" --out "$alt" > "$res/forget-each-$model-$tag.log" 2>&1
  cp "$main/results.json" "$res/forget-each-$model.json"
  cp "$alt/results.json" "$res/forget-each-$model-$tag.json"
  echo "$(date -u +%FT%TZ) forget-each $model classes=$classes wall_s=$(( $(date +%s) - start ))" >> "$res/cpu-wall.txt"
done
