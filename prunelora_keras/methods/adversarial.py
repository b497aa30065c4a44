"""Adversarial searches on a frozen model: the core step of Boundary Shrink and AMUN.

Both methods ask, for each forget image, where the original model's decision boundary is, and
relabel with what lies across it. The search runs on the *pixel* domain the methods' code bases
attack, [0, 1] (integer images divided by 255; the normalisation is part of the model there and
part of ``preprocess`` here, so the gradient runs through it), in inference mode, batched, and
compiled once per batch shape:

- ``fgsm_labels`` (Boundary Shrink, Chen et al. 2023): one signed-gradient step of size ``bound``
  up the cross-entropy of the true label, clipped to [0, 1] and rounded to the 256 pixel levels,
  and the model's prediction there (any class, the true one included, as both code bases do).
- ``pgd_first_flip`` (AMUN, Ebrahimpour-Boroojeny et al. 2025, ``pgdl2_modified.py``): L2 PGD,
  ``steps`` steps of size radius / 10 along the L2-normalised gradient, projected onto the radius
  ball around the image and clipped to [0, 1]; each image stops at the first point whose
  prediction is not its label and keeps that point and that prediction; after each ``steps`` steps
  the radius of every image still classified correctly doubles and the walk continues from where it
  is. Theirs loops until every image has flipped; here ``max_rounds`` radii are tried and an image
  still unflipped keeps its last point with its own label (``Flips.flipped`` says which).

Float inputs (a user's model's own domain) are attacked as they are, clipped to D_f's observed
range instead of [0, 1] and not rounded; ``bound`` and ``eps`` are then in that domain's units.

Example:
    >>> import keras, numpy as np  # doctest: +SKIP
    >>> x_adv, labels = fgsm_labels(model, x_f, y_f, Preprocess(), bound=0.1)  # doctest: +SKIP
    >>> flips = pgd_first_flip(model, x_f, y_f, Preprocess(), eps=0.04, steps=50)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax

from prunelora_keras.data.augment import Preprocess, infer_images
from prunelora_keras.training.progress import format_seconds

GRAD_FLOOR = 1e-10  # their eps_for_division: the L2 normalisation of a zero gradient stays zero


@dataclass(frozen=True)
class PixelBox:
    """The domain an attack moves in: inputs as floats, the box they are clipped to, and whether the
    stored images are integers (then rounded back to pixel levels where a method rounds)."""

    low: float
    high: float
    integer: bool

    @staticmethod
    def of(x: np.ndarray) -> "PixelBox":
        """[0, 1] for integer images; the observed [min, max] of float inputs."""
        if np.issubdtype(np.asarray(x[:1]).dtype, np.integer):
            return PixelBox(0.0, 1.0, True)
        return PixelBox(float(np.min(x)), float(np.max(x)), False)

    def floats(self, x: np.ndarray) -> np.ndarray:
        """``x`` as float32 in the attack's domain (integer pixels / 255)."""
        x = np.asarray(x)
        return (x.astype(np.float32) / 255.0) if self.integer else x.astype(np.float32)


def _frozen(model: keras.Model) -> tuple[list, list]:
    return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]


def _logits(model, values, images01, preprocess):
    return infer_images(model, values[0], values[1], images01, preprocess).astype(jnp.float32)


def _fgsm_fn(model, preprocess: Preprocess, bound: float, box: PixelBox):
    @jax.jit
    def fgsm(values, x, y):
        def loss(images):
            return optax.softmax_cross_entropy_with_integer_labels(_logits(model, values, images, preprocess), y).sum()

        adv = jnp.clip(x + bound * jnp.sign(jax.grad(loss)(x)), box.low, box.high)
        if box.integer:
            adv = jnp.round(adv * 255.0) / 255.0  # SalUn's discretize: back to the 256 pixel levels
        return adv, jnp.argmax(_logits(model, values, adv, preprocess), axis=-1)

    return fgsm


def fgsm_labels(model: keras.Model, x: np.ndarray, y: np.ndarray, preprocess: Preprocess, bound: float,
                batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Boundary Shrink's relabelling: each image's prediction after one FGSM step on ``model``.

    Args:
        model: the frozen model attacked (inference mode; its variables are read, not changed).
        x: stored images (integers: pixels; floats: the model's own input domain).
        y: their integer labels.
        preprocess: how stored images become the model's input.
        bound: the step, in [0, 1] pixels for integer images.
        batch_size: images per compiled call (the last batch is padded, so one shape compiles).
    Returns:
        (the perturbed images as float32 in the attack's domain, the model's int32 predictions there).

    Example:
        >>> _, labels = fgsm_labels(model, x_f, y_f, Preprocess(), 0.1)  # doctest: +SKIP
    """
    box = PixelBox.of(x)
    fn, values = _fgsm_fn(model, preprocess, float(bound), box), _frozen(model)
    out_x, out_y = [], []
    for start in range(0, len(y), batch_size):
        xb, yb = box.floats(x[start:start + batch_size]), np.asarray(y[start:start + batch_size]).astype(np.int32)
        n, pad = len(yb), np.resize(np.arange(len(yb)), min(batch_size, len(y)))  # repeats of its rows: one shape
        adv, pred = fn(values, xb[pad], yb[pad])
        out_x.append(np.asarray(adv)[:n])
        out_y.append(np.asarray(pred)[:n].astype(np.int32))
    return np.concatenate(out_x), np.concatenate(out_y)


@dataclass
class Flips:
    """What ``pgd_first_flip`` found, per image: ``x`` the first point predicted as another class (the
    last point tried where none was), ``labels`` the prediction there, ``radius`` the L2 radius in force
    then, ``flipped`` whether the prediction changed, and ``steps`` the gradient steps taken (the
    search's cost)."""

    x: np.ndarray
    labels: np.ndarray
    radius: np.ndarray
    flipped: np.ndarray
    steps: int


def _pgd_fn(model, preprocess: Preprocess, steps: int, box: PixelBox):
    """At most ``steps`` L2 PGD steps on a batch (fewer once every row has flipped); each row stops at its first
    misclassified point. Returns the walked batch and the number of steps taken."""

    def l2(v):
        return jnp.sqrt(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1))

    def per_row(v, like):  # a per-image value broadcast over the image's axes
        return v.reshape((-1,) + (1,) * (like.ndim - 1))

    @jax.jit
    def walk(values, x0, y, adv, radius, done, found_x, found_y):
        def loss(images):
            # each image's own loss: a sum, so that no image's gradient scale depends on the batch (theirs is a
            # mean over the images still walking; the per-image normalisation below undoes either scale)
            return optax.softmax_cross_entropy_with_integer_labels(_logits(model, values, images, preprocess), y).sum()

        def body(_, carry):
            adv, done, found_x, found_y = carry
            logits = _logits(model, values, adv, preprocess)
            pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            new = (~done) & (pred != y)  # checked before each step, as theirs
            found_x = jnp.where(per_row(new, adv), adv, found_x)
            found_y = jnp.where(new, pred, found_y)
            done = done | new
            g = jax.grad(loss)(adv)
            g = g / per_row(l2(g) + GRAD_FLOOR, g)
            step = adv + per_row(radius / 10.0, g) * g
            delta = step - x0
            factor = jnp.minimum(radius / l2(delta), 1.0)  # project onto the radius ball (0/0 never arises:
            moved = jnp.clip(x0 + delta * per_row(factor, delta), box.low, box.high)  # a step moves)
            adv = jnp.where(per_row(done, adv), adv, moved)
            return adv, done, found_x, found_y

        def walking(carry):  # a batch whose every row has flipped stops: its further steps would move nothing
            return (carry[0] < steps) & ~jnp.all(carry[2])

        def counted(carry):
            return (carry[0] + 1,) + body(carry[0], carry[1:])

        taken, adv, done, found_x, found_y = jax.lax.while_loop(
            walking, counted, (jnp.int32(0), adv, done, found_x, found_y))
        pred = jnp.argmax(_logits(model, values, adv, preprocess), axis=-1).astype(jnp.int32)
        new = (~done) & (pred != y)  # the check their next round's first step makes
        found_x = jnp.where(per_row(new, adv), adv, found_x)
        found_y = jnp.where(new, pred, found_y)
        return adv, done | new, found_x, found_y, taken

    return walk


def _batch_shapes(full: int) -> list[int]:
    """The compiled batch sizes, smallest first: ``full`` and its quarters down to 32, so that the few images
    still walking at the larger radii are not padded to a whole batch (at most four compilations)."""
    shapes = [full]
    while shapes[-1] // 4 >= 32 and len(shapes) < 4:
        shapes.append(shapes[-1] // 4)
    return shapes[::-1]


def pgd_first_flip(model: keras.Model, x: np.ndarray, y: np.ndarray, preprocess: Preprocess, eps: float = 0.04,
                   steps: int = 50, max_rounds: int = 12, batch_size: int = 512,
                   progress: Callable[[str], None] | None = None) -> Flips:
    """AMUN's adversarial examples: for each image, the first point of a growing-radius L2 PGD walk on
    ``model`` whose prediction is not its label.

    Round r (from 0) walks ``steps`` steps at radius ``eps * 2**r``; between rounds the images that
    flipped leave the batch (their rows are no longer computed). Each image's walk is that of
    AMUN's ``PGDL2`` on it alone (inference mode: no image affects another's).

    Args:
        model: the frozen original (inference mode; its variables are read, not changed).
        x: stored forget images (integers: pixels; floats: the model's own input domain).
        y: their integer labels.
        preprocess: how stored images become the model's input.
        eps: the first radius, in [0, 1] pixels for integer images.
        steps: steps per radius, each radius / 10 long.
        max_rounds: radii tried before an image is given up (kept unflipped, with its own label).
        batch_size: images per compiled call (the images still walking are padded to it or to one of its
            quarters, so a few shapes compile).
        progress: called with one line after each radius and, within a radius, at most every 30 s (the
            search is tens of forward-backward passes per image: minutes on a CPU); None: silent.
    Returns:
        ``Flips`` (float32 points in the attack's domain, int32 labels).

    Example:
        >>> flips = pgd_first_flip(model, x_f, y_f, Preprocess(), eps=0.04, steps=50)  # doctest: +SKIP
        >>> flips.flipped.mean()  # doctest: +SKIP
        1.0
    """
    box = PixelBox.of(x)
    x0 = box.floats(x)
    y = np.asarray(y).astype(np.int32)
    walk, values = _pgd_fn(model, preprocess, int(steps), box), _frozen(model)
    adv, found_x, found_y = x0.copy(), x0.copy(), y.copy()
    shapes = _batch_shapes(min(batch_size, len(y)))
    radius = np.full(len(y), eps, np.float32)
    done = np.zeros(len(y), bool)
    taken = 0
    start_time = last_line = time.perf_counter()
    for round_ in range(max_rounds):
        active = np.flatnonzero(~done)
        if active.size == 0:
            break
        at = float(eps * 2.0 ** round_)
        for start in range(0, active.size, batch_size):
            rows = active[start:start + batch_size]
            n = rows.size  # padded with repeats of its rows to the least of a few shapes that holds it
            pad = np.resize(rows, next(size for size in shapes if size >= n))
            *out, walked = walk(values, x0[pad], y[pad], adv[pad], radius[pad], done[pad], found_x[pad], found_y[pad])
            adv[rows], done[rows], found_x[rows], found_y[rows] = (np.asarray(o)[:n] for o in out)
            taken += n * int(walked)
            now = time.perf_counter()
            if progress is not None and now - last_line >= 30 and start + n < active.size:
                progress(f"adversarial search, radius {at:.3g} ({round_ + 1} of at most {max_rounds}): "
                         f"{start + n:,} of {active.size:,} walking images walked, {int(done.sum()):,} of {len(y):,} "
                         f"flipped ({format_seconds(now - start_time)} so far)")
                last_line = now
        radius[~done] *= 2.0
        if progress is not None:
            last_line = time.perf_counter()
            progress(f"adversarial search, radius {at:.3g} ({round_ + 1} of at most {max_rounds}) done: "
                     f"{int(done.sum()):,} of {len(y):,} flipped, {int((~done).sum()):,} go on at radius {2 * at:.3g} "
                     f"({format_seconds(last_line - start_time)} so far)")
    found_x[~done] = adv[~done]
    radius[~done] /= 2.0  # the radius the last walk had
    return Flips(found_x, found_y, radius, done.copy(), taken)
