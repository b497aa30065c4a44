"""Where a SimpleViT training step spends its time: each block operation, JAX (XLA:CPU) against torch.

    python benchmarks/vit_ops.py [--batch 32 --tokens 64 --dim 128 --heads 4 --mlp 256] --out F.json

Times forward+backward (gradients of the inputs and weights, as in training) of each operation of
one pre-LN block at the `cpu` preset's shapes, each framework on its own compiled/eager path:
jax.jit of jax.grad vs torch autograd, float32, the same thread count. Median of repeated calls,
milliseconds. Writes JSON and prints a markdown table (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def jax_ops(b, t, d, h, m):
    hd = d // h

    def attention(qkv):
        qkv = qkv.reshape(b, t, 3, h, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd), axis=-1)
        return jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, d)

    def layernorm(x, g, beta):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(var + 1e-6) * g + beta

    return {
        "layernorm": (lambda x, g, beta: layernorm(x, g, beta), [(b, t, d), (d,), (d,)]),
        "qkv dense (d -> 3d)": (lambda x, w, c: x @ w + c, [(b, t, d), (d, 3 * d), (3 * d,)]),
        "attention core (scores, softmax, weighted sum)": (attention, [(b, t, 3 * d)]),
        "out dense (d -> d)": (lambda x, w, c: x @ w + c, [(b, t, d), (d, d), (d,)]),
        "mlp fc1 + exact GELU (d -> mlp)": (lambda x, w, c: jax.nn.gelu(x @ w + c, approximate=False),
                                            [(b, t, d), (d, m), (m,)]),
        "mlp fc1 + tanh GELU (d -> mlp)": (lambda x, w, c: jax.nn.gelu(x @ w + c, approximate=True),
                                           [(b, t, d), (d, m), (m,)]),
        "mlp fc2 (mlp -> d)": (lambda x, w, c: x @ w + c, [(b, t, m), (m, d), (d,)]),
    }


def torch_ops(b, t, d, h, m):
    import torch
    import torch.nn.functional as F

    hd = d // h

    def attention(qkv):
        qkv = qkv.reshape(b, t, 3, h, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        w = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd), dim=-1)
        return torch.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, d)

    return {
        "layernorm": (lambda x, g, beta: F.layer_norm(x, (d,), g, beta, 1e-6), None),
        "qkv dense (d -> 3d)": (lambda x, w, c: x @ w + c, None),
        "attention core (scores, softmax, weighted sum)": (attention, None),
        "out dense (d -> d)": (lambda x, w, c: x @ w + c, None),
        "mlp fc1 + exact GELU (d -> mlp)": (lambda x, w, c: F.gelu(x @ w + c), None),
        "mlp fc1 + tanh GELU (d -> mlp)": (lambda x, w, c: F.gelu(x @ w + c, approximate="tanh"), None),
        "mlp fc2 (mlp -> d)": (lambda x, w, c: x @ w + c, None),
    }


def median_ms(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp", type=int, default=256)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    import torch

    rng = np.random.default_rng(0)
    shapes_ops = jax_ops(a.batch, a.tokens, a.dim, a.heads, a.mlp)
    t_ops = torch_ops(a.batch, a.tokens, a.dim, a.heads, a.mlp)
    rows = []
    for name, (jfn, shapes) in shapes_ops.items():
        arrays = [rng.normal(scale=0.5, size=s).astype(np.float32) for s in shapes]
        jargs = [jnp.asarray(x) for x in arrays]
        grad = jax.jit(jax.grad(lambda *xs: jnp.sum(jfn(*xs) ** 2), argnums=tuple(range(len(jargs)))))
        jax_ms = median_ms(lambda: jax.block_until_ready(grad(*jargs)), a.repeats)
        targs = [torch.tensor(x, requires_grad=True) for x in arrays]
        tfn = t_ops[name][0]

        def torch_step():
            for x in targs:
                x.grad = None
            (tfn(*targs) ** 2).sum().backward()

        np.testing.assert_allclose(np.asarray(jfn(*jargs)), tfn(*targs).detach().numpy(), rtol=1e-3, atol=1e-3)
        torch_ms = median_ms(torch_step, a.repeats)
        rows.append({"op": name, "jax_ms": jax_ms, "torch_ms": torch_ms, "ratio": jax_ms / torch_ms})
        print(f"{name}: jax {jax_ms:.2f} ms, torch {torch_ms:.2f} ms, ratio {jax_ms / torch_ms:.2f}", flush=True)
    result = {"shapes": vars(a), "torch_threads": torch.get_num_threads(), "jax": jax.__version__,
              "torch": torch.__version__, "rows": rows}
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    print("| operation (fwd+bwd) | JAX ms | torch ms | JAX / torch |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['op']} | {r['jax_ms']:.2f} | {r['torch_ms']:.2f} | {r['ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
