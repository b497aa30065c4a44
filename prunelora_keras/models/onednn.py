"""oneDNN's convolutions inside XLA:CPU programs: an XLA FFI library built on first use.

XLA:CPU's own convolutions reach 55-60% of oneDNN's speed per core and their weight gradients
15-35% (``benchmarks/conv_profile.py``); no arrangement of XLA's operations closes that. This module
compiles ``native/onednn_conv.cc`` (three FFI handlers: forward, input gradient, weight gradient;
NHWC float32) against the jaxlib FFI headers and oneDNN, registers them with JAX, and gives
``conv2d``, a ``jax.custom_vjp`` convolution whose three parts run in oneDNN.

It needs the ``cpu-kernels`` extra (``pip install 'prunelora-keras[cpu-kernels]'``: oneDNN 3.2 built
for GNU OpenMP, and its headers) and a C++17 compiler (``g++`` or ``$CXX``). The build takes about
three seconds once; the library is kept in ``$PRUNELORA_CACHE`` (default
``~/.cache/prunelora_keras``) under a hash of the source and the versions, so an upgrade rebuilds.

``PRUNELORA_CPU_CONV`` chooses: ``auto`` (the default: oneDNN when the extra and a compiler are
there, else XLA's forms of ``cpu_ops``), ``onednn`` (required: a missing piece is a ``ValueError``
naming it) or ``xla``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from functools import lru_cache, partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = Path(__file__).with_name("native") / "onednn_conv.cc"
TARGETS = ("PlkConvForward", "PlkConvBackwardData", "PlkConvBackwardWeights")
CHOICES = ("auto", "onednn", "xla")


def choice() -> str:
    """``PRUNELORA_CPU_CONV`` (``auto`` when unset), checked.

    Returns:
        "auto", "onednn" or "xla"; another value raises a one-line ``ValueError``.

    Example:
        >>> choice() in CHOICES  # doctest: +SKIP
        True
    """
    value = os.environ.get("PRUNELORA_CPU_CONV", "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"PRUNELORA_CPU_CONV={value!r}: expected one of {', '.join(CHOICES)}")
    return value


def _onednn_dirs() -> tuple[Path, Path] | None:
    """(include dir, lib dir) of the installed oneDNN (the ``cpu-kernels`` extra), or None."""
    for prefix in dict.fromkeys((sys.prefix, sysconfig.get_config_var("prefix") or sys.prefix, "/usr/local", "/usr")):
        include, lib = Path(prefix) / "include", Path(prefix) / "lib"
        if (include / "oneapi" / "dnnl" / "dnnl.hpp").exists() and any(lib.glob("libdnnl.so*")):
            return include, lib
    return None


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def missing() -> str | None:
    """What the oneDNN kernels lack here, as the fix to apply; None when they can be built.

    Returns:
        None, or one line naming the missing piece and its fix (the extra, a compiler, JAX >= 0.5).

    Example:
        >>> missing()  # doctest: +SKIP
        "oneDNN is not installed: pip install 'prunelora-keras[cpu-kernels]'"
    """
    if jax.default_backend() != "cpu":
        return "they run on JAX's CPU platform only"
    if not hasattr(jax, "ffi"):
        return f"they need JAX >= 0.5 (jax.ffi); this is {jax.__version__}: pip install -U jax"
    if _onednn_dirs() is None:
        return "oneDNN is not installed: pip install 'prunelora-keras[cpu-kernels]'"
    if _compiler() is None:
        return "no C++ compiler: install g++ (Debian: apt-get install g++) or set CXX"
    return None


def _cache_dir() -> Path:
    root = os.environ.get("PRUNELORA_CACHE") or Path.home() / ".cache" / "prunelora_keras"
    return Path(root) / "native"


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    """Build (once per source and versions) and load the FFI library; register its targets."""
    include, lib = _onednn_dirs()
    jax_include = jax.ffi.include_dir()
    source = SOURCE.read_bytes()
    from importlib.metadata import version

    dnnl = max(lib.glob("libdnnl.so*"), key=lambda f: len(f.name))  # the versioned file: an upgrade renames it
    tag = hashlib.sha256(source + f"{version('jaxlib')}|{include}|{dnnl}|{dnnl.stat().st_size}".encode()).hexdigest()[:16]
    path = _cache_dir() / f"libplk_onednn_{tag}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial_path = path.with_suffix(f".{os.getpid()}.tmp")
        cmd = [_compiler(), "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax_include}", f"-I{include}",
               str(SOURCE), f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}", "-o", str(partial_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise ValueError(f"building the oneDNN kernels failed ({' '.join(cmd[:2])} ...): "
                             f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}; set PRUNELORA_CPU_CONV=xla")
        os.replace(partial_path, path)  # atomic: a concurrent process loads a whole file or builds its own
    # oneDNN's OpenMP threads sleep between calls instead of spinning: spinning threads took the cores
    # from XLA's own threads and from other processes (two test workers: half the CPU time in the
    # kernel, sched_yield), and sleeping costs these convolutions nothing measurable (ResNet-50 `cpu`
    # step: 0.214 s against 0.215 s). Read by libgomp when it loads, below; a user's setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    library = ctypes.cdll.LoadLibrary(str(path))
    for name in TARGETS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
    return library


_BROKEN: list[str] = []  # why building or loading failed, once per process (auto then uses XLA's forms)


def enabled() -> bool:
    """Whether ``FastConv2D`` runs its convolutions in oneDNN here (``PRUNELORA_CPU_CONV`` and what
    is installed decide). ``onednn`` with a missing piece or a failed build raises; ``auto`` then says
    so once on stderr and uses XLA's forms (the same numbers, slower).

    Returns:
        True when the FFI library is built, loaded and registered with JAX.

    Example:
        >>> enabled()  # doctest: +SKIP
        True
    """
    wanted = choice()
    if wanted == "xla":
        return False
    reason = missing() or (_BROKEN[0] if _BROKEN else None)
    if reason is None:
        try:
            _library()
            return True
        except (ValueError, OSError) as exc:
            reason = str(exc)
            _BROKEN.append(reason)
            if wanted == "auto":
                print(f"prunelora_keras: oneDNN convolutions off ({reason}); using XLA's", file=sys.stderr)
    if wanted == "onednn":
        raise ValueError(f"PRUNELORA_CPU_CONV=onednn, but {reason}")
    return False


def _attrs(strides, pads) -> dict:
    (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
    return {k: np.int64(v) for k, v in dict(sh=sh, sw=sw, pt=pt, pb=pb, pl=pl, pr=pr).items()}


def _call(target: str, shape, *args, strides, pads):
    out = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args, **_attrs(strides, pads))


def _out_shape(x_shape, kernel_shape, strides, pads):
    kh, kw, _, cout = kernel_shape
    ho = (x_shape[1] + sum(pads[0]) - kh) // strides[0] + 1
    wo = (x_shape[2] + sum(pads[1]) - kw) // strides[1] + 1
    return x_shape[0], ho, wo, cout


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, pads):
    return _call(TARGETS[0], _out_shape(x.shape, kernel.shape, strides, pads), x, kernel, strides=strides, pads=pads)


def _conv_fwd(x, kernel, strides, pads):
    return _conv(x, kernel, strides, pads), (x, kernel)


def _conv_bwd(strides, pads, residuals, dy):
    x, kernel = residuals
    dx = _call(TARGETS[1], x.shape, dy, kernel, strides=strides, pads=pads)
    dw = _call(TARGETS[2], kernel.shape, x, dy, strides=strides, pads=pads)
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x, kernel, strides=(1, 1), pads=((0, 0), (0, 0))):
    """A float32 NHWC/HWIO convolution whose forward and both gradients run in oneDNN.

    Args:
        x: (batch, height, width, in) float32 array.
        kernel: (kh, kw, in, out) float32 array.
        strides: (sh, sw).
        pads: ((top, bottom), (left, right)) zero padding (``cpu_ops.explicit_padding``).
    Returns:
        the (batch, out_h, out_w, out) convolution, equal to ``lax.conv_general_dilated``'s (and its
        gradients to its autodiff's) to float rounding.

    Example:
        >>> import numpy as np
        >>> if enabled():  # doctest: +SKIP
        ...     float(conv2d(np.ones((1, 3, 3, 2), "float32"), np.ones((3, 3, 2, 1), "float32"),
        ...                  pads=((1, 1), (1, 1)))[0, 1, 1, 0])
        18.0
    """
    _library()
    return _conv(x, kernel, tuple(strides), tuple(tuple(p) for p in pads))
