#!/usr/bin/env bash
# Runs the `cpu` preset on real CIFAR-10 for the models named (default: vit resnet50 vit-intended),
# one after the other (never two trainings at once on two cores), into runs/cpu-<name>, logging to
# benchmarks/results/cpu-<name>.log and the wall time to benchmarks/results/cpu-wall.txt.
# Trained original and Retrain models already in a run folder's checkpoints/ are reused.
# `vit-intended` is the ViT's LoRA and PruneLoRA with the adapters the paper describes
# (out-projection and head), from the same original model as runs/cpu-vit; `vit-bf16` and
# `resnet50-bf16` are the four approximate paradigms with bfloat16 compute (unlearn.precision),
# from the same original model as runs/cpu-vit / runs/cpu-resnet50 (their effect on the metrics).
#   DATA=../shared/data/cifar10-jpeg.tar.gz bash benchmarks/run_cpu_preset.sh [vit] [resnet50] [vit-intended] [vit-bf16] [resnet50-bf16]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
out=benchmarks/results
mkdir -p "$out"
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(vit resnet50 vit-intended)
for name in "${names[@]}"; do
  start=$(date +%s)
  case "$name" in
    vit-intended)
      mkdir -p runs/cpu-vit-intended/checkpoints
      cp -n runs/cpu-vit/checkpoints/original-* runs/cpu-vit-intended/checkpoints/ 2>/dev/null || true
      python -m prunelora_keras.run --model vit --preset cpu --data-dir "$data" --out runs/cpu-vit-intended \
        --overwrite --paradigms lora,pruned_lora --set unlearn.vit_lora_targets=intended > "$out/cpu-$name.log" 2>&1
      ;;
    vit-bf16|resnet50-bf16)
      model=${name%-bf16}
      mkdir -p "runs/cpu-$name/checkpoints"
      cp -n runs/cpu-$model/checkpoints/original-* "runs/cpu-$name/checkpoints/" 2>/dev/null || true
      python -m prunelora_keras.run --model "$model" --preset cpu --data-dir "$data" --out "runs/cpu-$name" \
        --overwrite --paradigms finetune,pruned,lora,pruned_lora --set unlearn.precision=bfloat16 > "$out/cpu-$name.log" 2>&1
      ;;
    *)
      python -m prunelora_keras.run --model "$name" --preset cpu --data-dir "$data" --out "runs/cpu-$name" \
        --overwrite > "$out/cpu-$name.log" 2>&1
      ;;
  esac
  echo "$(date -u +%FT%TZ) $name wall_s=$(( $(date +%s) - start ))" >> "$out/cpu-wall.txt"
done
