import jax
import jax.numpy as jnp
import numpy as np

from prunelora_keras.data.augment import mixup, prepare_batch, random_crop, random_flip
from prunelora_keras.data.augment import Preprocess


def test_random_crop_is_a_window_of_the_padded_image():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 6, 6, 3)).astype("float32")
    out = np.asarray(random_crop(jax.random.key(0), jnp.asarray(x), pad=2))
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets = set()
    for i in range(16):
        hits = [(a, b) for a in range(5) for b in range(5) if np.array_equal(padded[i, a:a + 6, b:b + 6], out[i])]
        assert hits, f"image {i} is not a crop of its padded original"
        offsets.add(hits[0])
    assert len(offsets) > 3  # one offset per image, not one per batch


def test_random_flip_per_image():
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(64, 4, 4, 1)).astype("float32"))
    out = np.asarray(random_flip(jax.random.key(1), x))
    flipped = [np.array_equal(out[i], np.asarray(x[i])[:, ::-1]) for i in range(64)]
    kept = [np.array_equal(out[i], np.asarray(x[i])) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 15 < sum(flipped) < 49


def test_mixup_is_a_convex_combination_of_pairs():
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(8, 2, 2, 1)).astype("float32"))
    y = jax.nn.one_hot(jnp.arange(8), 8)
    xm, ym = mixup(jax.random.key(3), x, y, alpha=0.2)
    ym = np.asarray(ym)
    np.testing.assert_allclose(ym.sum(1), 1.0, rtol=1e-6)
    lam = ym.max(1)
    for i in range(8):
        j = int(np.argsort(ym[i])[-2]) if ym[i].max() < 1 else i
        np.testing.assert_allclose(np.asarray(xm[i]), lam[i] * np.asarray(x[i]) + (1 - lam[i]) * np.asarray(x[j]),
                                   rtol=1e-5, atol=1e-6)


def test_prepare_batch_normalises_without_augmentation():
    x = np.full((2, 2, 2, 3), 255, np.uint8)
    out, targets = prepare_batch(None, jnp.asarray(x), jnp.asarray([0, 2]), 3, Preprocess((0.5, 0.5, 0.5), (0.25, 0.5, 1.0)))
    np.testing.assert_allclose(np.asarray(out)[0, 0, 0], [2.0, 1.0, 0.5])
    np.testing.assert_array_equal(np.asarray(targets), [[1, 0, 0], [0, 0, 1]])
