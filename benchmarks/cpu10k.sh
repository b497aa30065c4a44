#!/usr/bin/env bash
# The generalising regime (issue 28): the `cpu-10k` preset on real CIFAR-10 (10,000 training images),
# one step after the other (never two trainings at once on two cores), into $RUNS/cpu10k-<step>, logs and
# folded results into benchmarks/results/cpu10k-*, wall times into benchmarks/results/cpu10k-wall.txt.
#   main-<model>      original, Retrain and the paper's four paradigms at 5 and 10 epochs (forget class 3)
#   headrow-<model>   the head-row question: Pruned LoRA (10 epochs) forgetting each of $CLASSES (default all)
#                     in its own run from one original, the classifier among the pruning targets (the ViT's
#                     default; on the ResNet unlearn.prune_classifier=true, as the reference does not prune
#                     it); no Retrain per class and no relearn test (the question is UA against whether the
#                     forget class's row was pruned; L2 pruning zeroes the same rows whatever the class).
#   methods-<model>   the baselines from the literature at their defaults (10 epochs), beside main-<model>'s Retrain
#                     (TAG=x: its own folder and files, cpu10k-<model>-methods-x*, for a later METHODS list)
#                     (METHODS=retrain,salun,scrub: the ResNet-18 table in docs/results.md; without main-<model>'s
#                     run folder it trains the original and Retrain itself)
#   relearn-<model>   the relearn test with the D_f sample at half the stream (eval.relearn_forget_share=0.5):
#                     Retrain, Finetune, Pruned LoRA and SCRUB (METHODS) beside main-<model>'s Retrain
#   vit-20k           main-vit on 20,000 training images (25 epochs of pretraining and Retrain): the ViT above 60%
#   intended-vit      LoRA and Pruned LoRA with adapters on the last block's attention out-projection and the
#                     head (the paper's intent; the reference ran the head's alone), beside main-vit's Retrain
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
link_trained() {  # link_trained FROM TO: reuse a run's original and its Retrain
  link_original "$1" "$2"
  ln -f "$1"/checkpoints/retrain-* "$2/checkpoints/"
}
for step in "$@"; do
  start=$(date +%s)
  model=${step#*-}
  case "$step" in
    main-*)
      [ -d "$runs/cpu10k-$model-headrow/checkpoints" ] && link_original "$runs/cpu10k-$model-headrow" "$runs/cpu10k-$model"
      "${run[@]}" --model "$model" --out "$runs/cpu10k-$model" > "$res/cpu10k-$model.log" 2>&1
      cp "$runs/cpu10k-$model/results.json" "$res/cpu10k-$model-results.json"
      ;;
    headrow-*)
      extra=()
      [ "$model" = vit ] || extra=(--set unlearn.prune_classifier=true)
      # reuses main-<model>'s original when it exists (else trains it; main-<model> can then reuse this one)
      [ -d "$runs/cpu10k-$model/checkpoints" ] && link_original "$runs/cpu10k-$model" "$runs/cpu10k-$model-headrow"
      "${run[@]}" --model "$model" --forget-each "${CLASSES:-all}" --paradigms pruned_lora --epochs 10 \
        --set eval.relearn_max_steps=0 "${extra[@]}" --out "$runs/cpu10k-$model-headrow" > "$res/cpu10k-$model-headrow.log" 2>&1
      cp "$runs/cpu10k-$model-headrow/results.json" "$res/cpu10k-$model-headrow-results.json"
      ;;
    methods-*)
      # TAG names a later METHODS list's own run folder, log and results (cpu10k-<model>-methods-<TAG>*), so
      # that the committed table's files are never overwritten by a run holding only the new rows
      name=cpu10k-$model-methods${TAG:+-$TAG}
      # main-<model>'s original and Retrain when that run is here; else this step trains them (seed 0: the same)
      [ -d "$runs/cpu10k-$model/checkpoints" ] && link_trained "$runs/cpu10k-$model" "$runs/$name"
      # 10 epochs, relearn test off: in main-<model> relearning hit its cap for every model, Retrain included;
      # --overwrite: another METHODS list reruns into the same folder, reusing every finished method's rows
      "${run[@]}" --model "$model" --paradigms "${METHODS:-retrain,ga,rl,l1_sparse,salun,neggrad_plus,scrub,ssd,bad_teacher,msg}" \
        --epochs 10 --set eval.relearn_max_steps=0 --overwrite --out "$runs/$name" >> "$res/$name.log" 2>&1
      cp "$runs/$name/results.json" "$res/$name-results.json"
      ;;
    intended-vit)
      # LoRA and Pruned LoRA with the adapters the paper intended (the last block's attention out-projection
      # and the head; the reference ran the head's alone), beside main-vit's Retrain: do the features then forget?
      link_trained "$runs/cpu10k-vit" "$runs/cpu10k-vit-intended"
      "${run[@]}" --model vit --paradigms retrain,lora,pruned_lora --epochs 10 --set eval.relearn_max_steps=0 \
        --set unlearn.vit_lora_targets=intended --out "$runs/cpu10k-vit-intended" > "$res/cpu10k-vit-intended.log" 2>&1
      cp "$runs/cpu10k-vit-intended/results.json" "$res/cpu10k-vit-intended-results.json"
      ;;
    relearn-*)
      # the relearn test with the D_f sample repeated to half the stream (eval.relearn_forget_share): at the
      # default (100 images of D_f among 9,000, joined once) every model of main-<model> hit the 200-step cap
      link_trained "$runs/cpu10k-$model" "$runs/cpu10k-$model-relearn"
      "${run[@]}" --model "$model" --paradigms "${METHODS:-retrain,finetune,pruned_lora,scrub}" --epochs 10 \
        --set eval.relearn_forget_share=0.5 --out "$runs/cpu10k-$model-relearn" > "$res/cpu10k-$model-relearn.log" 2>&1
      cp "$runs/cpu10k-$model-relearn/results.json" "$res/cpu10k-$model-relearn-results.json"
      ;;
    vit-20k)
      # the data lever for the ViT (at 10,000 images it stays under 60% test accuracy): 20,000 training
      # images, 25 epochs of pretraining and Retrain (the same steps as 50 at 10,000), the paper's pipeline;
      # the log is appended to: the committed one begins with the original's training, run as its own command
      "${run[@]}" --model vit --set data.train_size=20000 --set pretrain.epochs=25 --out "$runs/cpu10k-vit-20k" \
        >> "$res/cpu10k-vit-20k.log" 2>&1
      cp "$runs/cpu10k-vit-20k/results.json" "$res/cpu10k-vit-20k-results.json"
      ;;
    *) echo "error: unknown step $step: use main-<model>, headrow-<model>, methods-<model>, relearn-<model>, intended-vit or vit-20k" >&2; exit 2 ;;
  esac
  echo "$(date -u +%FT%TZ) $step wall_s=$(( $(date +%s) - start ))" >> "$res/cpu10k-wall.txt"
done
