#!/usr/bin/env bash
# The generalising regime (issue 28): the `cpu-10k` preset on real CIFAR-10 (10,000 training images),
# one step after the other (never two trainings at once on two cores), into $RUNS/cpu10k-<step>, logs and
# folded results into benchmarks/results/cpu10k-*, wall times into benchmarks/results/cpu10k-wall.txt.
#   main-<model>      original, Retrain and the paper's four paradigms at 5 and 10 epochs (forget class 3)
#   headrow-<model>   the head-row question: Pruned LoRA forgetting other classes from the same original,
#                     with the classifier among the pruning targets (the ViT's default; on the ResNet
#                     unlearn.prune_classifier=true, as the reference does not prune it). Classes: $CLASSES,
#                     or (ViT, default) three whose classifier row L2 pruning zeroes and three whose row it
#                     keeps, read from main-<model>'s pruning diagnostics. No Retrain per class: the question
#                     is UA against whether the row was pruned.
#   methods-<model>   the baselines from the literature at their defaults, beside main-<model>'s Retrain
#   DATA=../shared/data/cifar10-jpeg.tar.gz bash benchmarks/cpu10k.sh main-resnet18 main-vit headrow-vit
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
runs=${RUNS:-runs}
res=benchmarks/results
mkdir -p "$res"
run=(python -m prunelora_keras.run --preset cpu-10k --data-dir "$data")
link_original() {  # link_original FROM TO: reuse a run's trained original (hard links: no copy, no retraining)
  mkdir -p "$2/checkpoints"
  ln -f "$1"/checkpoints/original-* "$2/checkpoints/"
}
for step in "$@"; do
  start=$(date +%s)
  model=${step#*-}
  case "$step" in
    main-*)
      "${run[@]}" --model "$model" --out "$runs/cpu10k-$model" > "$res/cpu10k-$model.log" 2>&1
      cp "$runs/cpu10k-$model/results.json" "$res/cpu10k-$model-results.json"
      ;;
    headrow-*)
      classes=${CLASSES:-}
      if [ -z "$classes" ]; then
        classes=$(python - "$runs/cpu10k-$model/results.json" <<'PY'
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r.get("paradigm") == "pruned_lora"]
pruned = rows[0].get("classifier_rows_pruned") or [] if rows else []
kept = [c for c in range(10) if c not in pruned and c != 3]
print(",".join(str(c) for c in sorted([c for c in pruned if c != 3][:3] + kept[:3])))
PY
)
      fi
      extra=()
      [ "$model" = vit ] || extra=(--set unlearn.prune_classifier=true)
      link_original "$runs/cpu10k-$model" "$runs/cpu10k-$model-headrow"
      "${run[@]}" --model "$model" --forget-each "$classes" --paradigms pruned_lora "${extra[@]}" \
        --out "$runs/cpu10k-$model-headrow" > "$res/cpu10k-$model-headrow.log" 2>&1
      cp "$runs/cpu10k-$model-headrow/results.json" "$res/cpu10k-$model-headrow-results.json"
      ;;
    methods-*)
      link_original "$runs/cpu10k-$model" "$runs/cpu10k-$model-methods"
      ln -f "$runs/cpu10k-$model"/checkpoints/retrain-* "$runs/cpu10k-$model-methods/checkpoints/"
      "${run[@]}" --model "$model" --paradigms "${METHODS:-retrain,ga,rl,l1_sparse,salun,neggrad_plus,scrub,ssd,bad_teacher,msg}" \
        --out "$runs/cpu10k-$model-methods" > "$res/cpu10k-$model-methods.log" 2>&1
      cp "$runs/cpu10k-$model-methods/results.json" "$res/cpu10k-$model-methods-results.json"
      ;;
    *) echo "error: unknown step $step: use main-<model>, headrow-<model> or methods-<model>" >&2; exit 2 ;;
  esac
  echo "$(date -u +%FT%TZ) $step wall_s=$(( $(date +%s) - start ))" >> "$res/cpu10k-wall.txt"
done
