"""The command's entry point: ``python -m prunelora_keras.run --model vit [--preset quick] ...``.

The command lives in ``experiment/run.py``; this module only runs it, so that the command keeps the
short name users type.
"""

import sys

from prunelora_keras.experiment.run import main

if __name__ == "__main__":
    sys.exit(main())
