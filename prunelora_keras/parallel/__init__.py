"""Devices and processes: data-parallel placement on local devices (``distributed.py``) and
multi-process jobs on JAX's distributed runtime, with one writer (``multihost.py``).
"""
