"""The experiment and the command: configuration and presets, the pipeline and its stages,
sweeps over seeds and classes, many-model pools, and the run folder's report. Nothing in the
library imports this package; ``python -m prunelora_keras.run`` is its entry point.
"""
