"""Where a vmapped pool step loses on XLA:CPU: each kind of op of the quick models, fwd+bwd, for 16 models
under jax.vmap (batched dots, grouped convolutions) against 16 separate ops in one program.

    python benchmarks/vmap_ops.py > benchmarks/results/vmap-ops-cpu.txt
"""
import time, jax, jax.numpy as jnp
def bench(f, *a, n=50):
    f = jax.jit(f); jax.block_until_ready(f(*a))
    t = time.perf_counter()
    for _ in range(n): out = f(*a)
    jax.block_until_ready(out); return (time.perf_counter() - t) / n * 1e3
K, B, T, D, E = 16, 64, 16, 64, 128   # the quick ViT's MLP: 64 images x 16 tokens, 64 -> 128
x = jnp.ones((K, B * T, D)); w = jnp.ones((K, D, E))
def loss1(w, x): return jnp.sum(jnp.tanh(x @ w))
g = jax.grad(loss1)
batched = bench(jax.vmap(g), w, x)
loop = bench(lambda w, x: [g(w[k], x[k]) for k in range(K)], w, x)
single = bench(g, w[0], x[0])
print(f"dense fwd+bwd, {K} models: vmap (batched dot) {batched:.2f} ms, {K} separate dots in one program {loop:.2f} ms, one model x{K} {single*K:.2f} ms")
# conv: the ResNet's 3x3 at width 1/8 on 8x8 images
xc = jnp.ones((K, 64, 8, 8, 8)); wc = jnp.ones((K, 3, 3, 8, 8))
def lossc(w, x): return jnp.sum(jnp.tanh(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))))
gc = jax.grad(lossc)
print(f"3x3 conv fwd+bwd, {K} models: vmap (grouped conv) {bench(jax.vmap(gc), wc, xc):.2f} ms, separate {bench(lambda w, x: [gc(w[k], x[k]) for k in range(K)], wc, xc):.2f} ms")
# attention scores: 64 images x 4 heads x 16 tokens x 16 dims (the quick ViT)
q = jnp.ones((K, 64, 4, 16, 16))
def lossa(q): return jnp.sum(jax.nn.softmax(jnp.einsum("bhtd,bhsd->bhts", q, q)))
ga = jax.grad(lossa)
print(f"attention fwd+bwd, {K} models: vmap {bench(jax.vmap(ga), q):.2f} ms, separate {bench(lambda q: [ga(q[k]) for k in range(K)], q):.2f} ms")
# patch embedding: 2x2 stride-2 conv, 3 -> 64 channels on 8x8 images
xp = jnp.ones((K, 64, 8, 8, 3)); wp = jnp.ones((K, 2, 2, 3, 64))
def lossp(w, x): return jnp.sum(jnp.tanh(jax.lax.conv_general_dilated(x, w, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))))
gp = jax.grad(lossp)
print(f"patch-embedding conv fwd+bwd, {K} models: vmap {bench(jax.vmap(gp), wp, xp):.2f} ms, separate {bench(lambda w, x: [gp(w[k], x[k]) for k in range(K)], wp, xp):.2f} ms")
