"""On-device preprocessing and augmentation, traced into the compiled training step.

Pure JAX functions of (key, batch): no Python loop per image, one random draw per image for
crop offsets and flips (Keras's RandomCrop draws one offset per batch and does not trace under
``jax.jit``, so the CIFAR crop is implemented here).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def to_float(images: jax.Array) -> jax.Array:
    """Integer pixels (uint8 images) -> float32 in [0, 1]; float inputs (a user's model's own input
    domain) -> float32 as they are. With mean (0,) and std (1,) float inputs reach the model unchanged."""
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images.astype(jnp.float32)
    return images.astype(jnp.float32) / 255.0


def normalize(images01: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    return (images01 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def infer_images(model, trainable: list, non_trainable: list, images: jax.Array, mean: Sequence[float],
                 std: Sequence[float]):
    """``model``'s outputs on uint8 ``images`` in inference mode, from explicit variable values:
    the one normalise + ``stateless_call`` sequence behind evaluation, features, the prefix cache
    and SalUn's saliency (pure, so it traces into ``jax.jit`` and ``jax.grad``)."""
    outputs, _ = model.stateless_call(trainable, non_trainable, normalize(to_float(images), mean, std), training=False)
    return outputs


def random_crop(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """torchvision's RandomCrop(size, padding=pad): zero-pad, then one random offset per image."""
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * pad + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Horizontal flip of each image with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def mixup(key: jax.Array, images: jax.Array, targets: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
    """MixUp (Zhang et al. 2018): one Beta(alpha, alpha) weight per batch, partners by random permutation."""
    k_lam, k_perm = jax.random.split(key)
    lam = jax.random.beta(k_lam, alpha, alpha)
    perm = jax.random.permutation(k_perm, images.shape[0])
    return lam * images + (1 - lam) * images[perm], lam * targets + (1 - lam) * targets[perm]


def prepare_batch(key: jax.Array | None, images: jax.Array, labels: jax.Array, num_classes: int,
                  mean: Sequence[float], std: Sequence[float], augment: Sequence[str] = (),
                  mixup_alpha: float = 0.2) -> tuple[jax.Array, jax.Array]:
    """uint8 (or float) batch -> (normalised float inputs, soft targets), augmenting in pixel space first."""
    x = to_float(images)
    y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if augment:
        k_crop, k_flip, k_mix = jax.random.split(key, 3)
        if "crop" in augment:
            x = random_crop(k_crop, x)
        if "flip" in augment:
            x = random_flip(k_flip, x)
        if "mixup" in augment:
            x, y = mixup(k_mix, x, y, mixup_alpha)
    return normalize(x, mean, std), y
