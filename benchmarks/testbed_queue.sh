#!/usr/bin/env bash
# The testbed's whole queue (issues 41 and 42), one training at a time on two cores, in priority order;
# every step resumes where it stopped, so after an interruption run this again (finished stages are
# skipped, finished models reused). What the issue never cuts comes first: Retrain and the paper's four
# paradigms, class-wise over three forget classes (their spread) and on the random 10%; then the
# baselines beside them. Stop it with:
#   pkill -f testbed_queue.sh; pkill -f testbed.sh; pkill -f cpu10k.sh; pkill -f prunelora_keras.run
# (in that order: the queue first, or it starts its next step).
#   DATA=../shared/data/cifar10-jpeg.tar.gz nohup bash benchmarks/testbed_queue.sh > testbed-queue.out 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
# The three methods of issue 42 first (its rows need about 4 h; issue 41 needs the whole queue whatever
# its order): beside class3's Retrain (done 2026-12-07: `METHODS=boundary_shrink,boundary_expanding,amun
# bash benchmarks/testbed.sh methods-class3`), AMUN beside random's Retrain (trained here, reused by
# `random`), and the cpu-10k baseline tables (their own files: TAG). Finished stages are not listed (`class3`,
# done 2026-12-07): a stage's marker holds the package's code hash, so after any code change a listed
# finished stage would evaluate its original and Retrain again (every model and row reused, ~10 min).
# The cpu-10k rows ran before AMUN's random row (done 2026-12-07, 77 min: `METHODS=retrain,boundary_shrink,
# boundary_expanding,amun TAG=boundary-amun bash benchmarks/cpu10k.sh methods-resnet18 methods-vit`): their
# trainings resume by the epoch, while AMUN's adversarial search on 5,000 images (35 min on the testbed) is
# not saved part-way, so it starts where a sitting has room.
# AMUN beside random's Retrain: done 2026-12-07 (122 min: `RANDOM_METHODS=amun bash benchmarks/testbed.sh
# methods-random`; its results: testbed-methods-random-amun-results.json).
# SalUn beside it, the runner-up of AMUN's Table 1: done 2026-12-07 (34 min: `TAG=salun RANDOM_METHODS=salun
# bash benchmarks/testbed.sh methods-random`); the full methods-random below reuses both rows.
# Then the random 10%'s paradigms (the second scenario's table), the class-wise spread and the other
# baselines. The spread (classes 5 and 7) trains the paradigms at 10 epochs only: the 5-epoch runs stand
# on class 3 and the random 10% beside the paper's table, and two more classes of them would add about
# 2.3 h to a queue already past the issue's 12-h budget (since 2026-12-07; the spread's table says n).
bash benchmarks/testbed.sh random
EPOCHS=10 bash benchmarks/testbed.sh class5 class7
bash benchmarks/testbed.sh methods-class3 methods-random
