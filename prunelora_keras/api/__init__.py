"""The library's public functions (re-exported flat by ``prunelora_keras``): unlearn and evaluate a
user's model (``library.py``), pools of K models (``pools.py``) and what both refuse
(``checks.py``).
"""
