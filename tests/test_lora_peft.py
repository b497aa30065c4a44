"""Parity of the LoRA layers with peft (PyTorch): the same weights give the same outputs.

Skipped as a whole where torch or peft is not installed; the layers' own tests (test_lora.py) run
everywhere."""

import numpy as np
import pytest

from prunelora_keras.models.lora import LoRAConv2D, LoRADense
from test_lora import np_

torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0 && pip install -e '.[torch]'")
peft = pytest.importorskip("peft", reason="peft is not installed: pip install -e '.[torch]'")


class _Wrap(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def _peft(module, rank, alpha):
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=["inner"])
    return peft.get_peft_model(_Wrap(module), cfg)


def test_lora_dense_matches_peft():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 7)
    pm = _peft(lin, rank=4, alpha=8)
    lora = pm.base_model.model.inner
    with torch.no_grad():
        lora.lora_B["default"].weight.copy_(torch.tensor(rng.normal(size=(7, 4)), dtype=torch.float32))
    layer = LoRADense(7, adapter_rank=4, adapter_alpha=8)
    layer.build((None, 12))
    layer.kernel.assign(lin.weight.detach().numpy().T)
    layer.bias.assign(lin.bias.detach().numpy())
    layer.lora_a.assign(lora.lora_A["default"].weight.detach().numpy().T)
    layer.lora_b.assign(lora.lora_B["default"].weight.detach().numpy().T)
    x = rng.normal(size=(5, 12)).astype("float32")
    expected = pm(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(np_(layer(x)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, "same"), (3, 2, "valid"), (1, 1, "valid"), (1, 2, "valid")])
def test_lora_conv_matches_peft(kernel, stride, padding):
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(5, 6, kernel, stride=stride, padding=1 if padding == "same" else 0, bias=True)
    pm = _peft(conv, rank=3, alpha=6)
    lora = pm.base_model.model.inner
    with torch.no_grad():
        lora.lora_B["default"].weight.copy_(torch.tensor(rng.normal(size=(6, 3, 1, 1)), dtype=torch.float32))
    layer = LoRAConv2D(6, kernel, strides=stride, padding=padding, adapter_rank=3, adapter_alpha=6)
    layer.build((None, 9, 9, 5))
    layer.kernel.assign(conv.weight.detach().numpy().transpose(2, 3, 1, 0))
    layer.bias.assign(conv.bias.detach().numpy())
    layer.lora_a.assign(lora.lora_A["default"].weight.detach().numpy().transpose(2, 3, 1, 0))
    layer.lora_b.assign(lora.lora_B["default"].weight.detach().numpy().transpose(2, 3, 1, 0))
    x = rng.normal(size=(2, 9, 9, 5)).astype("float32")
    expected = pm(torch.tensor(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np_(layer(x)), expected, rtol=1e-5, atol=1e-5)


