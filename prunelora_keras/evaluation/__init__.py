"""Evaluation of an unlearned model: the metrics and attacks (``metrics.py``), penultimate
features (``features.py``), representation probes and CKA, relearn time, the many-model scores
(``forgetting_quality.py``), and all of them from one pass (``evaluate.py``).
"""
