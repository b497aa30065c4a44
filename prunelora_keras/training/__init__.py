"""Training: THE pure step (``step.py``), THE epoch loop (``loop.py``) and its pools of K models
(``pool_trainer.py``), the recipe (``recipe.py``), optimisers, BatchNorm policy, checkpoints,
the compiled inference pass (``inference.py``), the frozen-prefix cache, and Keras's fit on the
other backends (``fit_loop.py``; ``trainers.py`` chooses).
"""
