"""The search's entry point: ``python -m prunelora_keras.tune --model vit --preset quick --method salun
--trials 20 --out DIR``. The search lives in ``experiment/tune.py``; this module only runs it."""

import sys

from prunelora_keras.experiment.tune import main

if __name__ == "__main__":
    sys.exit(main())
