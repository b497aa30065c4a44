"""Multi-process runs on JAX's distributed runtime: joining the job, one writer, barriers, logs.

A multi-process job runs the same command in every process (one per host, or one per GPU). They
join through ``jax.distributed`` before anything touches a device; from then on ``jax.devices()``
lists every process's devices, the data-parallel mesh spans them, and every process runs the same
program on the same data in the same order (SPMD): each process feeds only its own devices' shards
of each global batch, and XLA's collectives (NCCL on GPUs, ICI on TPUs, gloo on CPUs) combine them.

What must not happen N times is writing: only process 0 writes files (results, plots, checkpoints,
the epoch-end state, the data cache). :func:`write_once` is the one gate: process 0 writes, then
every process waits at a barrier, so whatever follows may read what was written (the run folder must
be on a filesystem every process sees: checked at the start, :func:`share_run_folder`). Processes
other than 0 log to ``<out>/process<I>.log``.

How a job is described, first match wins:

- flags: ``--coordinator HOST:PORT --num-processes N --process-id I``;
- Keras's variables ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the first address is the coordinator),
  ``KERAS_DISTRIBUTION_NUM_PROCESSES``, ``KERAS_DISTRIBUTION_PROCESS_ID``;
- SLURM (``srun`` with more than one task): JAX reads the job from SLURM's variables;
- ``--num-processes auto``: JAX detects the cluster itself (Cloud TPU pod slices, SLURM, Open MPI,
  Kubernetes).

A job that cannot form never hangs: a bad combination is refused before joining, and a coordinator
that does not answer within ``--coordinator-timeout`` seconds ends the process with one ``error:``
line and exit code 2 (the runtime itself would abort from C++ after its own timeout).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any
from pathlib import Path

import jax
import numpy as np

from prunelora_keras.errors import UserError
from prunelora_keras.parallel.jobs import Job, detect_job, parse_address  # noqa: F401  (re-exported)

EXIT_USAGE = 2
DEFAULT_TIMEOUT_S = 300  # jax.distributed.initialize's own default


def _port_free(port: int) -> bool:
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((address, port))
            return True
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno in (97, 99):  # no IPv6 here: try IPv4
                continue
            return False
    return False


def join(job: Job, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join ``job`` through ``jax.distributed.initialize``; call it before anything touches a device.

    Process 0 first checks that the coordinator's port is free on this host. A watchdog ends the
    process with one ``error:`` line and exit code 2 if the job has not formed after ``timeout_s``
    (the runtime's own timeout, a little later, would abort from C++ with a core dump). On CPUs,
    cross-process collectives go through gloo.

    Args:
        job: from :func:`detect_job`.
        timeout_s: seconds to wait for the coordinator and every other process.
    """
    if job.process_id == 0 and job.coordinator is not None:
        port = parse_address(job.coordinator)[1]
        if not _port_free(port):
            raise UserError(f"--coordinator {job.coordinator}: port {port} is already in use on this host (process 0 "
                            "runs the coordinator there): choose a free port for every process")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    formed = threading.Event()

    def watchdog() -> None:
        if not formed.wait(timeout_s):
            where = f" at {job.coordinator}" if job.coordinator else ""
            print(f"error: {job.describe()}: the job did not form within {timeout_s:.0f} s{where}: start every process "
                  "with the same --coordinator and --num-processes (process 0 on the coordinator's host), check that "
                  "the address is reachable from here, or raise --coordinator-timeout", file=sys.stderr, flush=True)
            os._exit(EXIT_USAGE)

    threading.Thread(target=watchdog, name="join-watchdog", daemon=True).start()
    kwargs = {"initialization_timeout": int(timeout_s) + 30}
    if job.coordinator is not None:
        kwargs.update(coordinator_address=job.coordinator, num_processes=job.num_processes, process_id=job.process_id)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as exc:
        formed.set()
        raise UserError(f"{job.describe()}: could not join: {str(exc).splitlines()[0]}") from None
    formed.set()
    _runtime_output_to_stderr()


def _runtime_output_to_stderr() -> None:
    """Keep stdout for the results: the collectives' runtime (gloo) prints connection notes on the
    process's stdout, so file descriptor 1 goes to stderr and Python's stdout keeps the original."""
    sys.stdout.flush()
    original = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(original, "w", buffering=1)




def is_writer() -> bool:
    """True in the one process that writes files (process 0; the only one in a single-process run)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (a no-op in a single process).

    ``name`` must be the same in every process: a mismatch means the processes took different
    paths through the program, and is an error rather than a silent deadlock later.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def write_once(write: Callable[[], None], name: str) -> None:
    """Process 0 runs ``write``; then every process waits until it has, so that what follows may read it."""
    if is_writer():
        write()
    barrier(f"wrote {name}")


def first_on_process_0(fn: Callable[[], Any], name: str) -> Any:
    """``fn()`` in every process, process 0 first (a download into a shared cache happens once)."""
    if is_writer():
        result = fn()
        barrier(f"{name} on process 0")
        return result
    barrier(f"{name} on process 0")
    return fn()


def agree(value: bool) -> bool:
    """True in every process only if ``value`` is true in every process (False everywhere otherwise)."""
    if jax.process_count() == 1:
        return bool(value)
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray([bool(value)]))))


def share_run_folder(out_dir: Path) -> None:
    """Make ``out_dir`` the job's one run folder: process 0 creates it; the others check they see it and
    send their output to ``<out>/process<I>.log`` from here on.

    Raises:
        UserError: in every process, when some process cannot see what process 0 writes there (the
            folder must be on storage every process mounts: NFS, Lustre, a shared disk).
    """
    if jax.process_count() == 1:
        return
    token = out_dir / f".process0-{uuid.UUID(int=int(_shared_random()))}"  # the same name in every process
    write_once(lambda: (out_dir.mkdir(parents=True, exist_ok=True), token.write_text("written by process 0\n")),
               "the run folder")
    seen = agree(token.is_file())
    barrier("checked the run folder")
    if is_writer():
        token.unlink(missing_ok=True)
    if not seen:
        raise UserError(f"--out {out_dir}: some process cannot see what process 0 writes there; put the run folder "
                        "on storage every host mounts (NFS, Lustre, a shared disk)")
    if not is_writer():
        log = open(out_dir / f"process{jax.process_index()}.log", "a", buffering=1)
        sys.stdout.flush(), sys.stderr.flush()
        for fd in {1, 2, sys.stdout.fileno(), sys.stderr.fileno()}:  # Python's prints and the runtime's
            os.dup2(log.fileno(), fd)


def _shared_random() -> int:
    """A random 64-bit number, drawn by process 0 and the same in every process."""
    from jax.experimental import multihost_utils

    mine = np.frombuffer(os.urandom(8), np.uint32).copy()
    return int(np.asarray(multihost_utils.broadcast_one_to_all(mine)).view(np.uint64)[0])


def host_value(array) -> np.ndarray:
    """``array`` as one numpy array in every process, whatever its sharding.

    An array sharded over several processes' devices (a pool's K axis) is gathered, which is a
    collective: every process must call this for the same arrays in the same order.
    """
    if not isinstance(array, jax.Array) or array.is_fully_addressable or array.is_fully_replicated:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
