#!/usr/bin/env bash
# One short GPU window (at most 15 minutes of device time in all): everything this project wants measured
# on an accelerator, in one run of at most 9 minutes, writing one table to $OUT/gpu-table.md.
#
# Here, once:   bash benchmarks/gpu.sh fetch          # wheels for the device's Python 3.12 and CIFAR-10 into .wheels/
# On the GPU:   bash benchmarks/gpu.sh run            # device run, carry [".wheels"]; results in $OUT
# Rehearsal:    bash benchmarks/gpu.sh run --dry-run  # the same steps at tiny sizes on this CPU (CI runs it)
#
# The device's image has jax, optax, scikit-learn, pillow and matplotlib but not keras and two of its
# dependencies: `run` installs the carried wheels without touching the image's own packages (not in a
# dry run, which uses the current environment). CIFAR-10 is read from $DATA (default: the 20 MB tarball
# that `fetch` puts into .wheels/, else ../shared/data).
#
# Steps, each under its own time limit so that the whole fits (the table marks a step that ran out):
#   1. epoch timings at the paper's model sizes (benchmarks/epoch_time.py: ViT and ResNet-50, every
#      paradigm, the frozen-prefix cache off and on) on synthetic CIFAR-sized batches of 128;
#   2. the testbed's pipeline end to end on the full CIFAR-10: the `testbed` preset (airbench94, its recipe
#      of 15 epochs, the one definition the CPU tables use) with bfloat16 compute: original, Retrain and
#      PruneLoRA;
#   3. the many-model pools (benchmarks/ensemble.py) at K = 64 and 256 against sequential training.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
if [ "$mode" = fetch ]; then
  rm -rf .wheels && mkdir -p .wheels
  grep -qx '/.wheels/' .git/info/exclude 2>/dev/null || echo '/.wheels/' >> .git/info/exclude
  pip download 'keras>=3.10' namex optree --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --implementation cp -d .wheels
  # the 20 MB CIFAR-10 tarball travels with them (a hard link, or a copy across file systems; .wheels/ is
  # ignored by git, never committed)
  ln -f ../shared/data/cifar10-jpeg.tar.gz .wheels/ 2>/dev/null || cp ../shared/data/cifar10-jpeg.tar.gz .wheels/
  ls -la .wheels
  exit 0
fi
[ "$mode" = run ] || { echo "error: unknown mode $mode: use fetch or run [--dry-run]" >&2; exit 2; }
dry=0
[ "${2:-}" = --dry-run ] && dry=1
out="${OUT:-benchmarks/results/gpu}"
data="${DATA:-}"
if [ -z "$data" ]; then
  for candidate in .wheels/cifar10-jpeg.tar.gz shared/data/cifar10-jpeg.tar.gz ../shared/data/cifar10-jpeg.tar.gz; do
    [ -f "$candidate" ] && { data=$candidate; break; }
  done
fi
[ -f "$data" ] || { echo "error: CIFAR-10 not found: set DATA to cifar10-jpeg.tar.gz (../shared/data/README.md)" >&2; exit 2; }
mkdir -p "$out"
py=python3
if [ "$dry" = 1 ]; then
  py=python
  # tiny sizes: every step's code path in a few minutes on two CPU cores (bfloat16 pretraining kept, the
  # unlearning in float32: XLA:CPU compiles the emulated bfloat16 LoRA step for a minute)
  timing=(--preset quick --images 64 --epochs 2 --cache both --set model.depth=1)
  timing_resnet=(--preset quick --images 64 --epochs 2 --cache off --paradigms finetune --set model.width=0.0625)
  # The pipeline rehearses on a narrow airbench; the pools on the ViT only (the ResNet-50's are the same
  # code with another model).
  pipeline=(--set data.train_size=300 --set data.test_size=200 --set data.batch_size=64 --set model.widths=8,16,16
            --set pretrain.epochs=2 --set pretrain.precision=bfloat16
            --set 'unlearn.epochs=[1]' --set unlearn.batch_size=64 --set unlearn.precision=float32
            --set eval.relearn_max_steps=5)
  pools=(--preset quick --k 2 --modes vmap --torch off)
  pool_models=(vit)
  limits=(120 120 240 120 120)
else
  python3 -m pip install --quiet --no-index --no-deps --target /tmp/extra .wheels/*.whl
  export PYTHONPATH="$PWD:/tmp/extra${PYTHONPATH:+:$PYTHONPATH}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  timing=(--preset paper --images 6400 --epochs 2 --cache both)  # each row written as it is measured
  timing_resnet=("${timing[@]}")
  pipeline=(--epochs 10 --set pretrain.precision=bfloat16 --set unlearn.precision=bfloat16)
  pool_models=(vit resnet50)
  pools=(--preset quick --k 64,256 --modes vmap --torch auto --torch-max-k 64)
  limits=(75 75 280 35 35)  # seconds: 500 in all, plus installs and start-up, within 9 minutes
fi
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax
"$py" -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
steps="$out/gpu-steps.tsv"
printf 'step\tstatus\twall_s\n' > "$steps"
step() {  # step NAME LIMIT COMMAND...: run under a time limit, log to $out/NAME.log, record status and time
  local name=$1 limit=$2 start rc=0
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > "$out/$name.log" 2>&1 || rc=$?
  local status=ok
  [ "$rc" = 124 ] && status="ran out of time (${limit} s)"
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && status="failed (exit $rc; see $name.log)"
  printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - start ))" >> "$steps"
  echo "$name: $status"
}
step epoch_time-vit "${limits[0]}" "$py" benchmarks/epoch_time.py --model vit "${timing[@]}" --out "$out/epoch_time-vit.json"
step epoch_time-resnet50 "${limits[1]}" "$py" benchmarks/epoch_time.py --model resnet50 "${timing_resnet[@]}" --out "$out/epoch_time-resnet50.json"
rm -rf "$out/pipeline"
step pipeline-airbench "${limits[2]}" "$py" -m prunelora_keras.run --model airbench --preset testbed \
    --data-dir "$data" --paradigms retrain,pruned_lora "${pipeline[@]}" --out "$out/pipeline"
i=3
for model in "${pool_models[@]}"; do
  step "ensemble-$model" "${limits[$i]}" "$py" benchmarks/ensemble.py --model "$model" "${pools[@]}" --out "$out/ensemble-$model.json"
  i=$((i + 1))
done
"$py" benchmarks/gpu_table.py "$out" > "$out/gpu-table.md"
cat "$out/gpu-table.md"
# a rehearsal fails loudly: every step must have run (a real window keeps what it got)
if [ "$dry" = 1 ] && [ "$(cut -f2 "$steps" | grep -vc '^ok$\|^status$')" != 0 ]; then
  echo "error: the dry run had steps that did not finish: $steps" >&2
  exit 1
fi
