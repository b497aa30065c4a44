"""Data: the data set type and the unlearning split (``datasets.py``), where images come from
(``sources.py``, ``cifar10.py``), batch streams (``batches.py``) and on-device augmentation
(``augment.py``).
"""
