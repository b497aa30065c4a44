"""Convolution and max-pool gradients in the forms XLA:CPU computes fastest, exact to float rounding.

XLA's CPU backend runs a convolution's weight gradient (backprop-filter) through a generic
spatial-convolution kernel that, at the widths where CIFAR models generalise (64-256 channels,
batch 256), takes 1.7-2x as long as the same sums written as one matrix product per kernel tap:

    dW[i, j] = x_shifted(i, j)^T @ dy        (rows: batch x output pixels; one product per tap)

a convolution of few input values per window (a 2x2 stem over RGB) 8x slower than one im2col matmul,
and it computes a max-pool's gradient with select-and-scatter, slower than elementwise masks on the
pooled windows. ``benchmarks/conv_profile.py`` measures each form per shape against PyTorch;
``docs/speed.md`` has the table. These functions are used by the layers in ``models.layers`` only
on the JAX backend running on CPU (``on_jax_cpu``): GPUs keep cuDNN, other backends ``keras.ops``.

Every form here gives lax's result to float rounding (the products sum in another order), and
the max-pool gradient goes, like select-and-scatter's and PyTorch's, to the first maximum of each
window in row-major order, so ties are routed exactly as before.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from jax import lax

# A weight gradient takes the per-tap matmul form when each tap's product has at least this many
# multiply-adds (rows x in x out). Below it XLA's own kernel is as fast or faster (the CPU presets'
# narrow ResNets: 8.4 M per tap, 0.5-0.85x); at the testbed's widths (>= 236 M) the matmuls win 1.2-2x.
# The forward is one im2col matmul when a kernel window holds at most IM2COL_MAX_WINDOW values (a 2x2
# RGB stem: 8x faster); a 3x3 RGB stem (27) is not faster. benchmarks/conv_profile.py measures both.
MATMUL_WEIGHT_GRAD_MIN_MACS = 32 * 2**20
IM2COL_MAX_WINDOW = 16

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


_ENABLED = {"conv": True, "max_pool": True, "onednn": True}


def on_jax_cpu(form: str) -> bool:
    """Whether the layers use ``form`` (``"conv"`` or ``"max_pool"``): on JAX's CPU platform, unless
    ``plain_forms`` turned it off (``"onednn"``: also needs ``models.onednn.enabled()``)."""
    import keras

    return _ENABLED[form] and keras.backend.backend() == "jax" and jax.default_backend() == "cpu"


@contextlib.contextmanager
def plain_forms(conv: bool = True, max_pool: bool = True, onednn: bool = False):
    """Within this block, layers traced (compiled) use lax's own convolution and/or max-pool gradients.

    For A/B timing and for checking a result against XLA's forms; a function compiled inside keeps
    the forms it was traced with.

    Args:
        conv: turn off every convolution form (oneDNN's and XLA's).
        max_pool: turn off the masked max-pool gradient.
        onednn: with ``conv=False``: turn off oneDNN's convolutions only, so that XLA's forms of this
            module run (``conv=True`` turns off both).

    Example:
        >>> with plain_forms():
        ...     on_jax_cpu("conv")
        False
    """
    before = dict(_ENABLED)
    _ENABLED["conv"] = _ENABLED["conv"] and not conv
    _ENABLED["max_pool"] = _ENABLED["max_pool"] and not max_pool
    _ENABLED["onednn"] = _ENABLED["onednn"] and not onednn
    try:
        yield
    finally:
        _ENABLED.update(before)


def explicit_padding(size: int, kernel: int, stride: int, dilation: int, padding: str) -> tuple[int, int]:
    """(before, after) zero padding along one axis for Keras's ``"same"`` or ``"valid"`` (lax's rule)."""
    if padding == "valid":
        return 0, 0
    if padding != "same":
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _conv(x, kernel, strides, pads):
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DIMENSIONS)


def _taps(x, kernel_shape, strides, pads, out_hw):
    """The input window each kernel tap (i, j) multiplies: (batch, out_h, out_w, in) slices of padded x."""
    kh, kw = kernel_shape[:2]
    (sh, sw), (ho, wo) = strides, out_hw
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    return [xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] for i in range(kh) for j in range(kw)]


def weight_grad_by_taps(x, dy, kernel_shape, strides, pads):
    """The convolution's weight gradient as one matrix product per kernel tap (float32 accumulation)."""
    kh, kw, cin, cout = kernel_shape
    d = dy.reshape(-1, cout)
    grads = [lax.dot_general(t.reshape(-1, cin), d, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
             for t in _taps(x, kernel_shape, strides, pads, dy.shape[1:3])]
    return jnp.stack(grads).reshape(kh, kw, cin, cout)


def _im2col(x, kernel, strides, pads):
    """The convolution as one matrix product over the concatenated taps (K = kh * kw * in)."""
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    ho = (x.shape[1] + sum(pads[0]) - kh) // sh + 1
    wo = (x.shape[2] + sum(pads[1]) - kw) // sw + 1
    cols = jnp.concatenate(_taps(x, kernel.shape, strides, pads, (ho, wo)), axis=-1)
    y = lax.dot_general(cols.reshape(-1, kh * kw * cin), kernel.reshape(kh * kw * cin, cout),
                        (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return y.astype(x.dtype).reshape(x.shape[0], ho, wo, cout)


_FORWARDS = {"lax": _conv, "im2col": _im2col}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_in_forms(x, kernel, strides, pads, forward, weight_grad):
    return _FORWARDS[forward](x, kernel, strides, pads)


def _conv_fwd(x, kernel, strides, pads, forward, weight_grad):
    return _FORWARDS[forward](x, kernel, strides, pads), (x, kernel)


def _conv_bwd(strides, pads, forward, weight_grad, residuals, dy):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda inputs: _conv(inputs, kernel, strides, pads), x)
    (dx,) = input_vjp(dy)  # XLA's own input gradient: no matmul form beat it (conv_profile.py)
    if weight_grad == "taps":
        dw = weight_grad_by_taps(x, dy, kernel.shape, strides, pads).astype(kernel.dtype)
    else:
        (dw,) = jax.vjp(lambda k: _conv(x, k, strides, pads), kernel)[1](dy)
    return dx, dw


_conv_in_forms.defvjp(_conv_fwd, _conv_bwd)


def conv_forms(input_shape, kernel_shape, strides, dilation=(1, 1), groups: int = 1,
               dtype="float32") -> tuple[str, str]:
    """(forward form, weight-gradient form) ``conv2d`` uses for this convolution, from the profile.

    With oneDNN's kernels (``models.onednn``: the ``cpu-kernels`` extra and a compiler; one JAX
    device; float32) every convolution with a kernel larger than 1x1 runs there: ("onednn",
    "onednn"). Otherwise XLA's forms: the forward is one im2col matmul when a kernel window holds at
    most ``IM2COL_MAX_WINDOW`` values (airbench's 2x2 whitening convolution of RGB images: 3.5 ms
    against XLA's 29 ms at batch 256; its weight gradient then by taps too, 4.6 ms against 30 ms),
    else lax's; the weight gradient is by taps when each tap's product has at least
    ``MATMUL_WEIGHT_GRAD_MIN_MACS`` multiply-adds. Anything else (1x1, dilated, grouped, unknown
    batch, or inside ``plain_forms()``): ("lax", "lax").

    Args:
        input_shape: (batch, height, width, in); a None batch gives lax's forms.
        kernel_shape: (kh, kw, in, out).
        strides: (sh, sw).
        dilation, groups: the layer's; only 1 takes other forms.
        dtype: the computation's dtype (oneDNN's kernels are float32).
    Returns:
        ("lax", "im2col" or "onednn", and "lax", "taps" or "onednn").

    Example:
        >>> with plain_forms(conv=False, max_pool=False, onednn=True):  # XLA's forms only
        ...     conv_forms((256, 15, 15, 64), (3, 3, 64, 256), (1, 1)), conv_forms((256, 32, 32, 3), (2, 2, 3, 24), (1, 1))
        (('lax', 'taps'), ('im2col', 'taps'))
    """
    kh, kw, cin, cout = kernel_shape
    if (not _ENABLED["conv"] or (kh, kw) == (1, 1) or tuple(dilation) != (1, 1) or groups != 1
            or None in tuple(input_shape)):
        return "lax", "lax"
    if _ENABLED["onednn"] and str(dtype) == "float32" and jax.device_count() == 1:
        from prunelora_keras.models import onednn

        if onednn.enabled():
            return "onednn", "onednn"
    if kh * kw * cin <= IM2COL_MAX_WINDOW:
        return "im2col", "taps"
    rows = input_shape[0] * -(-input_shape[1] // strides[0]) * -(-input_shape[2] // strides[1])
    return "lax", "taps" if rows * cin * cout >= MATMUL_WEIGHT_GRAD_MIN_MACS else "lax"


def conv2d(x, kernel, strides=(1, 1), padding: str = "valid", forms: tuple[str, str] | None = None):
    """A channels_last 2-D convolution in the forms XLA:CPU runs fastest (``jax.custom_vjp``).

    Args:
        x: (batch, height, width, in) array.
        kernel: (kh, kw, in, out) array.
        strides: (sh, sw).
        padding: ``"same"`` or ``"valid"`` (Keras's meanings).
        forms: (forward, weight gradient) as ``conv_forms`` names them (("onednn", "onednn"): all
            three parts in oneDNN); default: ``conv_forms``'s choice for these shapes.
    Returns:
        the (batch, out_h, out_w, out) convolution; it and its gradients equal
        ``lax.conv_general_dilated``'s to float rounding (the input gradient is lax's own).

    Example:
        >>> import numpy as np
        >>> x, k = np.ones((2, 5, 5, 3), "float32"), np.ones((3, 3, 3, 4), "float32")
        >>> float(conv2d(x, k, padding="same", forms=("im2col", "taps"))[0, 2, 2, 0])
        27.0
    """
    strides = tuple(strides)
    pads = tuple(explicit_padding(x.shape[a + 1], kernel.shape[a], strides[a], 1, padding) for a in (0, 1))
    forward, weight_grad = forms or conv_forms(x.shape, kernel.shape, strides, dtype=x.dtype)
    if (forward, weight_grad) == ("lax", "lax"):
        return _conv(x, kernel, strides, pads)
    if forward == "onednn":
        from prunelora_keras.models import onednn

        return onednn.conv2d(x, kernel, strides, pads)
    return _conv_in_forms(x, kernel, strides, pads, forward, weight_grad)


def depthwise_conv2d(x, kernel, strides=(1, 1), padding: str = "valid"):
    """A channels_last depthwise convolution as a sum of shifted products, one per kernel tap.

    XLA:CPU runs lax's grouped convolution (``feature_group_count`` = channels) at a few hundred
    MFLOP/s: the depthwise layers of a MobileNetV3Small at 32x32 (batch 64) take 537 ms a training
    pass on two cores, as taps 24 ms (PyTorch: 92), 12-60x per layer; the products fuse into one
    loop, and autodiff gives the gradients as slices and sums (``benchmarks/depthwise_profile.py``).

    Args:
        x: (batch, height, width, channels) array.
        kernel: (kh, kw, channels, depth_multiplier) array (Keras's ``DepthwiseConv2D`` kernel).
        strides: (sh, sw).
        padding: ``"same"`` or ``"valid"`` (Keras's meanings).
    Returns:
        the (batch, out_h, out_w, channels * depth_multiplier) convolution, output channel
        ``c * depth_multiplier + m`` from input channel ``c`` (lax's order); it and its gradients
        equal lax's to float rounding.

    Example:
        >>> import numpy as np
        >>> x, k = np.ones((2, 5, 5, 3), "float32"), np.ones((3, 3, 3, 2), "float32")
        >>> depthwise_conv2d(x, k, padding="same").shape, float(depthwise_conv2d(x, k, padding="same")[0, 2, 2, 0])
        ((2, 5, 5, 6), 9.0)
    """
    strides = tuple(strides)
    kh, kw, channels, multiplier = kernel.shape
    pads = tuple(explicit_padding(x.shape[a + 1], kernel.shape[a], strides[a], 1, padding) for a in (0, 1))
    out_hw = tuple((x.shape[a + 1] + sum(pads[a]) - kernel.shape[a]) // strides[a] + 1 for a in (0, 1))
    taps = _taps(x, kernel.shape, strides, pads, out_hw)
    if multiplier == 1:
        return sum(t * kernel[i // kw, i % kw, :, 0] for i, t in enumerate(taps))
    y = sum(t[..., None] * kernel[i // kw, i % kw] for i, t in enumerate(taps))
    return y.reshape(*y.shape[:3], channels * multiplier)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x, pool):
    return _windows(x, pool).max(axis=(2, 4))


def _windows(x, pool):
    n, h, w, c = x.shape
    ph, pw = pool
    ho, wo = h // ph, w // pw
    return x[:, :ho * ph, :wo * pw, :].reshape(n, ho, ph, wo, pw, c)


def _window_max_fwd(x, pool):
    y = _window_max(x, pool)
    return y, (x, y)


def _window_max_bwd(pool, residuals, dy):
    x, y = residuals
    ph, pw = pool
    windows = _windows(x, pool)
    seen = jnp.zeros(y.shape, bool)
    rows = []
    for i in range(ph):
        cols = []
        for j in range(pw):
            hit = windows[:, :, i, :, j, :] == y
            cols.append(jnp.where(hit & ~seen, dy, jnp.zeros_like(dy)))  # first maximum in row-major order
            seen = seen | hit
        rows.append(jnp.stack(cols, axis=3))
    dx = jnp.stack(rows, axis=2).reshape(x.shape[0], y.shape[1] * ph, y.shape[2] * pw, x.shape[3])
    n, h, w, c = x.shape
    return (jnp.pad(dx, ((0, 0), (0, h - dx.shape[1]), (0, w - dx.shape[2]), (0, 0))),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def max_pool(x, pool_size=(2, 2)):
    """Max over non-overlapping (stride = pool) windows with valid padding, channels_last.

    The forward is a reshape and a max; the gradient goes to the first maximum of each window (as
    ``lax.reduce_window``'s select-and-scatter does) through elementwise masks XLA:CPU fuses.

    Args:
        x: (batch, height, width, channels); rows and columns past the last whole window are dropped.
        pool_size: (ph, pw), also the strides.
    Returns:
        (batch, height // ph, width // pw, channels).

    Example:
        >>> import numpy as np
        >>> max_pool(np.arange(16, dtype="float32").reshape(1, 4, 4, 1))[0, :, :, 0].tolist()
        [[5.0, 7.0], [13.0, 15.0]]
    """
    return _window_max(jnp.asarray(x), tuple(pool_size))
