"""Pools of K models of one architecture trained as one compiled program: the one step, K times.

Many-model evaluations (forgetting quality, KLoM: ``forgetting_quality.py``) need K retrained and
K unlearned models. ``PoolTrainer`` takes K single-model ``train.Trainer`` objects, each built
exactly as the single-model loop builds it (its own seed, initial values, adapter init), stacks
their states on a leading K axis and trains them together with ``step.train_step``, the same pure
function the single loop jits: no copy of the step, only a map over it.

How the K axis is mapped (``mode``), chosen per platform because it was measured
(``benchmarks/ensemble.py``, ``docs/speed.md`` "Ensembles"):
- ``"vmap"``: ``jax.vmap`` over the step. One program does K models' work in each op: the payoff
  on accelerators, where one small model leaves most of the chip idle. On devices, the K axis is
  sharded (each device trains K / D whole models; no communication at all between them).
- ``"map"``: ``jax.lax.map`` over the step inside one compiled program: the models run one after
  another without Python between them. On a 2-core CPU one small model already keeps the cores
  busy, and the batched matmuls and grouped convolutions that ``vmap`` produces run slower there
  than K plain ones.
- ``"loop"``: the single loop's own compiled step called once per member each step, on that
  member's own state: exactly the single-model program, K times, one compilation.
- ``"auto"``: ``"vmap"`` on accelerators or with several devices, ``"loop"`` on one CPU device.
  Measured on 2 CPU cores (quick preset, one epoch of K models against K single-model runs one
  after another): K = 16, ViT vmap 0.50x, map 0.94x, loop 1.02x; ResNet-50 vmap 0.72x, map 0.40x
  (``lax.map``'s loop body runs the convolutions slower), loop 1.05x.

Every member keeps its own data order (``(seed_k, epoch)``) and step keys (``fold_in(key(seed_k),
step)``), so member k equals the model the single loop trains with seed k (within float tolerance:
the batched ops sum in another order).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prunelora_keras.data.augment import infer_images
from prunelora_keras.parallel.distributed import put_global
from prunelora_keras.parallel.multihost import host_value
from prunelora_keras.training.caches import COMPILED
from prunelora_keras.training.pool_checks import all_equal, check_members
from prunelora_keras.training.inference import predict_logits
from prunelora_keras.training.step import StepConsts, TrainState, merge_values, train_step
from prunelora_keras.training.epochs import EpochRun, EpochStats, run_epochs
from prunelora_keras.training.loop import Trainer

MODES = ("auto", "vmap", "map", "loop")
Stream = Callable[[int, np.random.Generator], Any]


def choose_mode(mode: str, devices: Sequence[Any] | None = None) -> str:
    """The K-axis mapping for ``mode`` on this platform (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if mode != "auto":
        return mode
    several = devices is not None and len(devices) > 1
    return "vmap" if several or jax.devices()[0].platform != "cpu" else "loop"


def stack(trees: Sequence[Any]) -> Any:
    """Stack equal-structured pytrees on a new leading axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, k: int) -> Any:
    """Member ``k`` of a stacked pytree."""
    return jax.tree_util.tree_map(lambda x: x[k], tree)


class PoolTrainer:
    """K models of one architecture trained at once; member k is ``members[k]`` trained alone.

    Args:
        members: single-model trainers, built but not fitted, that differ only in their values and
            seeds. ``check_members`` refuses members whose step would differ from the first's (layer
            configs, optimiser updates on a probe, loss code and closed-over values, normalisation,
            augmentation, masks). Their buffers are copied, never donated: each member stays usable.
        streams: per member, its batch stream ``stream(epoch, rng)`` (the single loop's
            ``ArrayStream`` or a method's own); all yield batches of the same shapes.
        mode: "auto", "vmap", "map" or "loop" (module docstring).
        devices: several devices: the K axis is sharded over them (K must divide evenly).
        label: the name in progress lines.
        verbose: progress lines.

    Example:
        >>> pool = PoolTrainer([Trainer(m, optax.adam(1e-3), num_classes=10, preprocess=pre, seed=s)  # doctest: +SKIP
        ...                     for m, s in zip(models, seeds)],
        ...                    [ArrayStream(x, y, 64) for _ in seeds])
        >>> history = pool.fit(epochs=2)  # doctest: +SKIP
        >>> logits = pool.logits(x_test)  # (K, N, classes)  # doctest: +SKIP
    """

    def __init__(self, members: Sequence[Trainer], streams: Sequence[Stream], *, mode: str = "auto",
                 devices: Sequence[Any] | None = None, label: str = "pool", verbose: bool = True):
        if len(members) < 1 or len(members) != len(streams):
            raise ValueError("one stream per member, and at least one member")
        first = members[0]
        check_members(members)
        self.spec, self.streams = first.spec, list(streams)  # the members themselves are not kept: their models go
        self.k, self.label, self.verbose = len(members), label, verbose
        self.devices = list(devices) if devices is not None and len(devices) > 1 else None
        if self.devices is not None and self.k % len(self.devices):
            raise ValueError(f"{self.k} models do not split evenly over {len(self.devices)} devices")
        self.mode = choose_mode(mode, self.devices)
        if self.devices is not None and self.mode != "vmap":
            raise ValueError("a pool sharded over devices maps its K axis with vmap")
        self.seeds = np.asarray([m.seed for m in members], np.uint32)
        # Values every member shares (the original's frozen weights, SCRUB's teacher) are held once.
        self.frozen_stacked = not all_equal([m.frozen_values for m in members])
        self.teacher_stacked = first.teacher is not None and not all_equal([m.teacher for m in members])
        if self.mode == "loop":  # K separate states: copies, since the step donates them (the members stay usable)
            self._states = [jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True),
                                                   TrainState(m.train_values, m.non_trainable_values, m.opt_state))
                            for m in members]
            self._consts = [StepConsts(m.frozen_values if self.frozen_stacked else first.frozen_values,
                                       m.teacher if self.teacher_stacked else first.teacher) for m in members]
            self._step = jax.jit(functools.partial(_keyed_step, self.spec), donate_argnums=(0,))
            self._executables: dict[tuple, Callable] = {}
        else:
            self._states = TrainState(stack([m.train_values for m in members]),
                                      stack([m.non_trainable_values for m in members]),
                                      stack([m.opt_state for m in members]))
            self._consts = StepConsts(
                stack([m.frozen_values for m in members]) if self.frozen_stacked else first.frozen_values,
                stack([m.teacher for m in members]) if self.teacher_stacked else first.teacher)
            self._step = jax.jit(functools.partial(_pool_step, self.spec, self.mode, self.frozen_stacked,
                                                   self.teacher_stacked), donate_argnums=(0,))
        self.global_step = 0
        self._signatures: set = set()
        self.place_state()
        self._keys = jax.jit(jax.vmap(lambda seed, step: jax.random.fold_in(jax.random.key(seed), step),
                                      in_axes=(0, None)))
        self._key_block: tuple[int, np.ndarray] = (0, np.zeros((0,)))
        self._key_data = jax.jit(lambda seeds, step: jax.random.key_data(self._keys(seeds, step)))

    # ------------------------------------------------------------------ the state, as checkpoints see it

    def state(self) -> TrainState:
        """Every member's trained values, non-trainable values and optimiser state, stacked on a
        leading K axis (in loop mode too), for ``checkpoint.save_state``."""
        if self.mode == "loop":
            return TrainState(*(stack([s[i] for s in self._states]) for i in range(3)))
        return self._states

    def restore(self, state: TrainState, global_step: int) -> None:
        """Continue from ``state`` (as ``state()`` gives it) after ``global_step`` steps."""
        if self.mode == "loop":
            self._states = [TrainState(*(unstack(part, k) for part in state)) for k in range(self.k)]
        else:
            self._states = TrainState(*state)
        self.global_step = int(global_step)
        self.place_state()

    @property
    def frozen_values(self) -> Any:
        """The frozen values: stacked (K leading) when members differ, else the one shared list."""
        if self.mode == "loop":
            return stack([c.frozen for c in self._consts]) if self.frozen_stacked else self._consts[0].frozen
        return self._consts.frozen

    # ------------------------------------------------------------------ placement

    def _shardings(self):
        mesh = jax.sharding.Mesh(np.asarray(self.devices), ("k",))
        p = jax.sharding.PartitionSpec
        return jax.sharding.NamedSharding(mesh, p("k")), jax.sharding.NamedSharding(mesh, p())

    def place_state(self) -> None:
        """Shard the stacked state over the devices (K axis) and replicate what is shared."""
        if self.devices is None:
            return
        by_k, replicated = self._shardings()
        self._states = put_global(self._states, by_k)
        self._consts = StepConsts(put_global(self._consts.frozen, by_k if self.frozen_stacked else replicated),
                                  None if self._consts.teacher is None else
                                  put_global(self._consts.teacher, by_k if self.teacher_stacked else replicated))

    def _put(self, tree: Any) -> Any:
        return tree if self.devices is None else put_global(tree, self._shardings()[0])

    # ------------------------------------------------------------------ training

    def _batches(self, epoch: int):
        """Each step's batches, one per member (its own data order)."""
        iterators = [stream(epoch, np.random.default_rng([int(seed), epoch]))
                     for stream, seed in zip(self.streams, self.seeds)]
        yield from zip(*iterators)

    @staticmethod
    def stacked(parts: Sequence[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-member batches as one batch with a leading K axis."""
        return {name: (np.stack([p[name][0] for p in parts]),
                       np.stack([np.asarray(p[name][1]) for p in parts]).astype(np.int32)) for name in parts[0]}

    def _compiled(self, part: dict, key_data: Any) -> Callable:
        """loop mode: the single step compiled ahead of time per batch signature (a lower dispatch
        cost than ``jax.jit``'s call path, as ``train.Trainer`` does)."""
        signature = tuple((n, np.shape(x), np.shape(y)) for n, (x, y) in part.items())
        if signature not in self._executables:
            self._executables[signature] = self._step.lower(self._states[0], self._consts[0], part, key_data).compile()
        return self._executables[signature]

    def _loop_keys(self, step: int) -> np.ndarray:
        """Every member's key data for ``step``, computed 256 steps at a time (one dispatch, not one per step)."""
        start, block = self._key_block
        if not start <= step < start + len(block):
            steps = jnp.arange(step, step + 256)
            block = np.asarray(jax.vmap(lambda s: self._key_data(jnp.asarray(self.seeds), s))(steps))
            self._key_block = (step, block)
            start = step
        return block[step - start]

    def step_once(self, parts: Sequence[dict]) -> list[dict[str, jax.Array]] | dict[str, jax.Array]:
        """One step of every member on its own batch (``parts[k]``); returns the metrics (a list of
        per-member dicts in loop mode, else one dict of (K,) arrays)."""
        if self.mode == "loop":
            key_data = self._loop_keys(self.global_step)
            out = []
            for k, part in enumerate(parts):
                part = {name: (np.asarray(x), np.asarray(y).astype(np.int32)) for name, (x, y) in part.items()}
                step = self._compiled(part, key_data[k])
                self._states[k], metrics = step(self._states[k], self._consts[k], part, key_data[k])
                out.append(metrics)
            self.global_step += 1
            return out
        keys = self._put(self._keys(jnp.asarray(self.seeds), self.global_step))
        self._states, metrics = self._step(self._states, self._consts, self._put(self.stacked(parts)), keys)
        self.global_step += 1
        return metrics

    def fit(self, epochs: int, first_epoch: int = 1, on_epoch_end: Callable[[EpochStats], None] | None = None
            ) -> list[EpochStats]:
        """Train every member ``epochs`` epochs; returns the pool's statistics per epoch (loss and
        accuracy averaged over the members; ``seconds`` excludes the first step's compilation)."""
        def run_epoch(epoch: int, progress) -> EpochRun:
            losses, corrects, counts = [], [], []
            start, compile_s = time.perf_counter(), 0.0
            for i, parts in enumerate(self._batches(epoch), start=1):
                signature = tuple((n, np.shape(x), np.shape(y)) for n, (x, y) in parts[0].items())
                new = signature not in self._signatures
                if new:  # this call compiles: wait for the steps in flight, then time it apart
                    jax.block_until_ready(self._states)
                    t0 = time.perf_counter()
                metrics = self.step_once(parts)
                if new:
                    jax.block_until_ready(metrics)
                    spent = time.perf_counter() - t0
                    compile_s += spent
                    start += spent
                    self._signatures.add(signature)
                if isinstance(metrics, list):
                    metrics = {name: [m[name] for m in metrics] for name in metrics[0]}
                losses.append(metrics["loss"])
                corrects.append(metrics["correct"])
                counts.append(metrics["count"])
                if progress.tty:
                    progress.step(epoch, i, None)
            jax.block_until_ready(self._states)
            seconds = time.perf_counter() - start
            # (steps, K); gathered whole where the K axis is sharded over several processes
            loss = np.asarray([host_value(v) for v in losses], np.float64)
            count = np.asarray([host_value(v) for v in counts], np.float64)
            correct = float(np.asarray(jax.device_get([host_value(v) for v in corrects])).sum())
            return EpochRun(loss, count, correct, seconds, compile_s)

        return run_epochs(self.label, run_epoch, epochs=epochs, first_epoch=first_epoch,
                          steps_per_epoch=getattr(self.streams[0], "steps_per_epoch", 0), verbose=self.verbose,
                          on_epoch_end=on_epoch_end)

    # ------------------------------------------------------------------ reading the members

    def member_values(self, k: int) -> tuple[list, list]:
        """(member k's trainable values in its model's order, its non-trainable values)."""
        if self.mode == "loop":
            state, consts = self._states[k], self._consts[k]
            return merge_values(self.spec, state.train, consts.frozen), list(state.non_trainable)
        frozen = unstack(self._consts.frozen, k) if self.frozen_stacked else self._consts.frozen
        return merge_values(self.spec, unstack(self._states.train, k), frozen), unstack(self._states.non_trainable, k)

    output_classes: int | None = None  # logits kept (the first ones): a trained shadow class is not scored

    def logits(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Every member's float32 logits on stored images ``x`` (inference mode, through the members'
        own ``preprocess``): (K, N, classes), the first ``output_classes`` of them where that is set
        (``api.method_pool`` sets it for a plan whose head is wider than the data's classes)."""
        out = self._all_logits(x, batch_size)
        return out if self.output_classes is None else out[..., :self.output_classes]

    def _all_logits(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        if self.mode == "loop":  # the single model's inference function, once per member
            return np.stack([predict_logits(self.spec.model, x, self.spec.preprocess, batch_size, self.member_values(k))
                             for k in range(self.k)])
        fn = _pool_logits(self.spec, self.mode, self.frozen_stacked)
        parts = []
        for start in range(0, len(x), batch_size):
            xb = np.asarray(x[start:start + batch_size])
            valid = len(xb)
            if valid < batch_size and len(x) > batch_size:  # one compiled shape for every batch
                xb = np.concatenate([xb, np.zeros((batch_size - valid, *xb.shape[1:]), xb.dtype)])
            parts.append(host_value(fn(self._states.train, self._consts.frozen, self._states.non_trainable, xb))[:, :valid])
        return np.concatenate(parts, axis=1) if parts else np.zeros((self.k, 0, 0), np.float32)


def _keyed_step(spec, state: TrainState, consts: StepConsts, batch: dict, key_data: jax.Array
                ) -> tuple[TrainState, dict[str, jax.Array]]:
    """``step.train_step`` taking its key as raw key data (host-made, no per-member dispatch)."""
    return train_step(spec, state, consts, batch, jax.random.wrap_key_data(key_data))


def _pool_step(spec, mode: str, frozen_stacked: bool, teacher_stacked: bool, state: TrainState, consts: StepConsts,
               batch: dict, keys: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """``step.train_step`` for every member: vmapped or mapped over the leading K axis."""

    def one(member_state, frozen, teacher, member_batch, key):
        return train_step(spec, member_state, StepConsts(frozen, teacher), member_batch, key)

    frozen, teacher = consts.frozen, consts.teacher
    if mode == "vmap":
        return jax.vmap(one, in_axes=(0, 0 if frozen_stacked else None, 0 if teacher_stacked else None, 0, 0))(
            state, frozen, teacher, batch, keys)
    return jax.lax.map(lambda xs: one(xs[0], xs[1] if frozen_stacked else frozen, xs[2] if teacher_stacked else teacher,
                                      xs[3], xs[4]),
                       (state, frozen if frozen_stacked else None, teacher if teacher_stacked else None, batch, keys))


def _pool_logits(spec, mode: str, frozen_stacked: bool) -> Callable:
    """The pool's jitted logits over its K members (one per step spec, which holds the preprocess, and mapping)."""
    key = ("pool_logits", id(spec), mode, frozen_stacked)
    cached = COMPILED.lookup(key)
    if cached is not None and cached[0] is spec:
        return cached[1]

    def one(train, frozen, non_trainable, images):
        values = merge_values(spec, train, frozen)
        return infer_images(spec.model, values, non_trainable, images, spec.preprocess).astype(jnp.float32)

    @jax.jit
    def fn(train, frozen, non_trainable, images):
        if mode == "vmap":
            return jax.vmap(one, in_axes=(0, 0 if frozen_stacked else None, 0, None))(train, frozen, non_trainable,
                                                                                       images)
        return jax.lax.map(lambda xs: one(xs[0], xs[1] if frozen_stacked else frozen, xs[2], images),
                           (train, frozen if frozen_stacked else None, non_trainable))

    return COMPILED.put(key, (spec, fn))[1]  # the spec is kept: its id names no other spec while cached
def member_seeds(seed: int, pool: str, k: int) -> list[int]:
    """K seeds for the members of pool ``pool`` of a run with seed ``seed``: distinct, reproducible,
    below 2**31 (a Trainer's ``jax.random.key`` and numpy's generators take them as they are)."""
    tag = int.from_bytes(pool.encode()[:8].ljust(8, b"\0"), "little")
    state = np.random.SeedSequence([seed, tag]).generate_state(k, np.uint32)
    return [int(s) >> 1 for s in state]
