"""3x3 convolution on XLA:CPU: its own conv against im2col matmul forms, forward and forward+backward.

    python benchmarks/conv3x3_im2col.py

Prints milliseconds per call at CIFAR ResNet shapes (batch 128); see benchmarks/README.md.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

def conv_lax(x, w):
    return jax.lax.conv_general_dilated(x, w, (1,1), "SAME", dimension_numbers=("NHWC","HWIO","NHWC"))
def conv_shift(x, w):
    kh, kw, ci, co = w.shape
    xp = jnp.pad(x, ((0,0),(kh//2,kh//2),(kw//2,kw//2),(0,0)))
    H, W = x.shape[1], x.shape[2]
    cols = jnp.concatenate([xp[:, i:i+H, j:j+W, :] for i in range(kh) for j in range(kw)], axis=-1)
    return cols @ w.reshape(kh*kw*ci, co)
def conv_shift_sum(x, w):
    kh, kw, ci, co = w.shape
    xp = jnp.pad(x, ((0,0),(kh//2,kh//2),(kw//2,kw//2),(0,0)))
    H, W = x.shape[1], x.shape[2]
    return sum(xp[:, i:i+H, j:j+W, :] @ w[i, j] for i in range(kh) for j in range(kw))
def bench(f, x, w, n=5):
    loss = lambda x, w: jnp.sum(f(x, w) ** 2)
    g = jax.jit(jax.grad(loss, argnums=(0, 1)))
    fw = jax.jit(f)
    jax.block_until_ready(g(x, w)); jax.block_until_ready(fw(x, w))
    t = time.perf_counter()
    for _ in range(n): jax.block_until_ready(fw(x, w))
    tf = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for _ in range(n): jax.block_until_ready(g(x, w))
    return tf, (time.perf_counter() - t) / n
rng = np.random.default_rng(0)
for (b, h, ci, co) in [(128, 32, 16, 16), (128, 32, 16, 8), (128, 16, 32, 32), (128, 8, 64, 64), (128, 4, 128, 128)]:
    x = jnp.asarray(rng.normal(size=(b, h, h, ci)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, ci, co)), jnp.float32)
    ref = conv_lax(x, w)
    out = {}
    for name, f in [("lax", conv_lax), ("shift_concat", conv_shift), ("shift_sum", conv_shift_sum)]:
        np.testing.assert_allclose(np.asarray(f(x, w)), np.asarray(ref), rtol=1e-3, atol=1e-2)
        out[name] = bench(f, x, w)
    print((b, h, ci, co), {k: f"fwd {v[0]*1e3:.1f}ms fwd+bwd {v[1]*1e3:.1f}ms" for k, v in out.items()}, flush=True)
