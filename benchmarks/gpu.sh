#!/usr/bin/env bash
# Time unlearning epochs at the paper's model sizes on a lent GPU (the device tool's H200 image has
# jax, optax, torch, peft, scikit-learn, pillow and matplotlib, but not keras and two of its
# dependencies), and print the tables.
#
# Here, once:   bash benchmarks/gpu.sh fetch        # wheels for the device's Python 3.12 into .wheels/
# On the GPU:   bash benchmarks/gpu.sh run          # (device run with carry [".wheels"]); results in $OUT
#
# `run` installs the carried wheels without touching the image's own packages, then for each model
# times 300 steps per paradigm (100 per epoch, 3 epochs; the prefix cache off and on) with
# benchmarks/epoch_time.py on synthetic CIFAR-sized data (32x32 RGB, batch 128), then the many-model
# pools of benchmarks/ensemble.py at K = 64 and 256.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
if [ "$mode" = fetch ]; then
  rm -rf .wheels && mkdir -p .wheels
  grep -qx '/.wheels/' .git/info/exclude 2>/dev/null || echo '/.wheels/' >> .git/info/exclude
  pip download 'keras>=3.10' namex optree --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --implementation cp -d .wheels
  ls -la .wheels
  exit 0
fi
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
python3 -m pip install --quiet --no-index --no-deps --target /tmp/extra .wheels/*.whl
export PYTHONPATH="$PWD:/tmp/extra${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
for model in vit resnet50; do
  python3 benchmarks/epoch_time.py --model "$model" --preset paper --images 12800 --epochs 3 --cache both \
      --out "$out/gpu-epoch_time-$model.json" 2>&1 | tee "$out/gpu-epoch_time-$model.log" | grep -v '^{' || true
done
# Many-model pools (issue 16's goal on an accelerator: the pool at least 5x faster than sequential
# training): the quick preset's models, K = 64 and 256, vmap (auto on a GPU) against one after another.
for model in vit resnet50; do
  python3 benchmarks/ensemble.py --model "$model" --preset quick --k 64,256 --modes vmap --torch auto \
      --torch-max-k 64 --out "$out/gpu-ensemble-$model.json" 2>&1 | tee "$out/gpu-ensemble-$model.log" | grep -v '^{' || true
done
