"""Parity of the structured pruning masks with torch.nn.utils.prune.ln_structured.

Skipped as a whole where torch is not installed; the pruner's own tests (test_pruning.py) run
everywhere."""

import numpy as np
import pytest

from prunelora_keras.models.pruning import keep_mask, unit_scores

torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0 && pip install -e '.[torch]'")


def _torch_keep(weight_torch_layout: np.ndarray, amount: float) -> np.ndarray:
    import torch.nn.utils.prune as tprune

    module = torch.nn.Linear(1, 1) if weight_torch_layout.ndim == 2 else torch.nn.Conv2d(1, 1, 1)
    module.weight = torch.nn.Parameter(torch.tensor(weight_torch_layout))
    tprune.ln_structured(module, "weight", amount=amount, n=2, dim=0)
    return module.weight_mask.detach().numpy().reshape(weight_torch_layout.shape[0], -1)[:, 0]


@pytest.mark.parametrize("shape", [(7, 5), (10, 3), (9, 4, 3, 3), (16, 8, 1, 1), (1, 4), (384, 64)])
@pytest.mark.parametrize("amount", [0.5, 0.3, 0.75])
def test_masks_equal_torch_ln_structured(shape, amount):
    rng = np.random.default_rng(hash((shape, amount)) % 2**32)
    w = rng.normal(size=shape).astype("float32")
    keras_kernel = w.T if w.ndim == 2 else w.transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(keep_mask(unit_scores(keras_kernel), amount), _torch_keep(w, amount))


def test_ties_match_torch_away_from_the_cut_and_are_ranked_at_it():
    w = np.random.default_rng(5).normal(size=(9, 4)).astype("float32")
    w[[2, 5, 7]] = w[0] * 3  # a tie among clear winners
    w[[1, 4]] = w[3]  # a tie among losers
    for amount in (0.3, 0.5):
        np.testing.assert_array_equal(keep_mask(unit_scores(w.T), amount), _torch_keep(w, amount))
    tied = np.tile(np.array([[1.0, 2.0, 0.5]], np.float32), (7, 1))  # every unit tied: the cut splits a tie
    ours, theirs = keep_mask(unit_scores(tied.T), 0.5), _torch_keep(tied, 0.5)
    assert ours.sum() == theirs.sum() == 3  # same count; which tied units survive is torch.topk's detail
