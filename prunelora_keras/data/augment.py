"""On-device preprocessing (``Preprocess``) and augmentation, traced into the compiled functions.

Pure JAX functions of (key, batch): no Python loop per image, one random draw per image for
crop offsets and flips (Keras's RandomCrop draws one offset per batch and does not trace under
``jax.jit``, so the CIFAR crop is implemented here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class Preprocess:
    """How stored images become the model's input: the one value every stage is handed.

    Integer pixels (uint8 images) are scaled to [0, 1], then normalised per channel,
    ``(x - mean) / std``; float inputs (a user's model's own input domain) are only cast to float32
    and normalised, so ``Preprocess()`` (mean 0, std 1) passes them through unchanged. It is the
    data set's statistics and nothing else; it is hashable, so compiled functions are cached on it.
    Applied once, inside each compiled function (training step, inference, features, saliency),
    where the batch enters the model.

    Args:
        mean: per-channel means of ``x / 255`` (one value broadcasts over every channel).
        std: per-channel standard deviations of ``x / 255``.

    Example:
        >>> import numpy as np
        >>> pre = Preprocess(mean=(0.5,), std=(0.25,))
        >>> float(pre(np.full((1, 2, 2, 1), 255, np.uint8)).max())
        2.0
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def __call__(self, images: jax.Array) -> jax.Array:
        return normalize(to_float(images), self.mean, self.std)


def to_float(images: jax.Array) -> jax.Array:
    """Integer pixels -> float32 in [0, 1]; float inputs -> float32 as they are."""
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images.astype(jnp.float32)
    return images.astype(jnp.float32) / 255.0


def normalize(images01: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    return (images01 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def infer_images(model, trainable: list, non_trainable: list, images: jax.Array, preprocess: Preprocess):
    """``model``'s outputs on stored ``images`` in inference mode, from explicit variable values:
    the one preprocess + ``stateless_call`` sequence behind evaluation, features, the prefix cache
    and SalUn's saliency (pure, so it traces into ``jax.jit`` and ``jax.grad``)."""
    outputs, _ = model.stateless_call(trainable, non_trainable, preprocess(images), training=False)
    return outputs


def random_crop(key: jax.Array, images: jax.Array, pad: int = 4, mode: str = "constant") -> jax.Array:
    """torchvision's RandomCrop(size, padding=pad): zero-pad (``mode="reflect"``: mirror the border, as
    airbench's 2-pixel translation), then one random offset per image."""
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
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


def smooth_targets(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """One-hot targets, smoothed as torch's ``CrossEntropyLoss(label_smoothing=s)``: (1 - s) one-hot + s / classes.

    Args:
        labels: integer labels (n,).
        num_classes: the targets' width.
        smoothing: s in [0, 1); 0 gives plain one-hot targets.
    Returns:
        float32 targets (n, num_classes).

    Example:
        >>> smooth_targets(jnp.array([1]), 4, 0.2).tolist()
        [[0.05000000074505806, 0.8500000238418579, 0.05000000074505806, 0.05000000074505806]]
    """
    y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return y if not smoothing else y * (1.0 - smoothing) + smoothing / num_classes


def prepare_batch(key: jax.Array | None, images: jax.Array, labels: jax.Array, num_classes: int,
                  preprocess: Preprocess, augment: Sequence[str] = (),
                  mixup_alpha: float = 0.2, label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """uint8 (or float) batch -> (normalised float inputs, soft targets), augmenting in pixel space first.

    ``augment``: ``crop`` (4-pixel zero-padded random crop), ``translate`` (2-pixel reflect-padded, as
    airbench), ``flip`` (each image with probability 1/2), ``mixup``; ``altflip`` is the batch stream's
    (``batches.AlternatingFlip``), nothing to do here.
    """
    x = to_float(images)
    y = smooth_targets(labels, num_classes, label_smoothing)
    if augment:
        k_crop, k_flip, k_mix = jax.random.split(key, 3)
        if "crop" in augment:
            x = random_crop(k_crop, x)
        if "translate" in augment:
            x = random_crop(k_crop, x, pad=2, mode="reflect")
        if "flip" in augment:
            x = random_flip(k_flip, x)
        if "mixup" in augment:
            x, y = mixup(k_mix, x, y, mixup_alpha)
    return normalize(x, preprocess.mean, preprocess.std), y
