"""How a multi-process job is described (flags, Keras's variables, SLURM, ``auto``), read without
importing JAX: the command decides before anything heavy loads whether this process is one of a
job and whether it writes the run folder. Joining the job is ``multihost.join``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from prunelora_keras.errors import UserError


@dataclass(frozen=True)
class Job:
    """A multi-process job: where its coordinator listens and which process this is.

    ``coordinator``, ``num_processes`` and ``process_id`` are None where JAX detects them (SLURM,
    Cloud TPU); ``source`` says where the description came from, for the log.
    """

    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    source: str

    def describe(self) -> str:
        if self.num_processes is None:
            return f"a job JAX detects itself ({self.source})"
        return f"process {self.process_id} of {self.num_processes}, coordinator {self.coordinator} ({self.source})"


def _parse_int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{what} {value!r}: pass an integer") from None


def parse_address(address: str, what: str = "--coordinator") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port); one clear error otherwise."""
    host, sep, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{what} {address!r}: pass HOST:PORT, e.g. 10.0.0.1:1234 (host 0's address and a free port)")
    return host, int(port)


def detect_job(coordinator: str | None = None, num_processes: str | None = None, process_id: int | None = None,
               environ: Mapping[str, str] | None = None) -> Job | None:
    """The multi-process job the flags or the environment describe, or None for a single process.

    Args:
        coordinator: ``--coordinator HOST:PORT`` (process 0 listens there; the others connect).
        num_processes: ``--num-processes``: a count, or ``"auto"`` (JAX detects the cluster).
        process_id: ``--process-id``: this process's index, 0 to N-1.
        environ: the environment (default ``os.environ``).

    Returns:
        A ``Job``; None when neither flags nor environment describe one of more than one process.

    Raises:
        UserError: an incomplete or impossible combination (I >= N, N < 1, a malformed address).

    Example:
        >>> detect_job("127.0.0.1:1234", "2", 1).describe()
        'process 1 of 2, coordinator 127.0.0.1:1234 (flags)'
    """
    env = os.environ if environ is None else environ
    if num_processes is not None and num_processes.strip().lower() == "auto":
        if coordinator is not None or process_id is not None:
            raise UserError("--num-processes auto lets JAX detect the job: drop --coordinator and --process-id, or "
                            "pass a count instead of auto")
        return Job(None, None, None, "detected by JAX: Cloud TPU, SLURM, Open MPI or Kubernetes")
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise UserError(f"a multi-process run needs --coordinator HOST:PORT, --num-processes N and --process-id I "
                            f"together; missing {', '.join(missing)}")
        return _checked(coordinator, _parse_int(num_processes, "--num-processes"), int(process_id), "flags",
                        "--coordinator", "--num-processes", "--process-id")
    keras_vars = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                  "KERAS_DISTRIBUTION_PROCESS_ID")
    if any(env.get(k) for k in keras_vars):
        missing = [k for k in keras_vars if not env.get(k)]
        if missing:
            raise UserError(f"{', '.join(missing)} not set: a multi-process run through Keras's variables needs all "
                            f"three of {', '.join(keras_vars)}")
        n = _parse_int(env[keras_vars[1]], keras_vars[1])
        if n == 1:
            return None
        first = env[keras_vars[0]].split(",")[0]
        return _checked(first, n, _parse_int(env[keras_vars[2]], keras_vars[2]), "KERAS_DISTRIBUTION_*",
                        keras_vars[0], keras_vars[1], keras_vars[2])
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(k in env for k in slurm) and env["SLURM_NTASKS"].isdigit() and int(env["SLURM_NTASKS"]) > 1:
        return Job(None, int(env["SLURM_NTASKS"]), _parse_int(env["SLURM_PROCID"], "SLURM_PROCID"), "SLURM")
    return None


def _checked(coordinator: str, n: int, i: int, source: str, c_name: str, n_name: str, i_name: str) -> Job | None:
    host, port = parse_address(coordinator, c_name)
    if n < 1:
        raise UserError(f"{n_name} {n}: a job has at least one process")
    if not 0 <= i < n:
        raise UserError(f"{i_name} {i} with {n_name} {n}: process ids run from 0 to {n - 1}")
    if n == 1:
        return None  # one process: nothing to join
    return Job(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}", n, i, source)


