import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0 && pip install -e '.[torch]'")

from prunelora_keras.experiment.config import ModelConfig  # noqa: F401
from prunelora_keras.interop.torch import keras_to_state_dict, load_state_dict_into_keras  # noqa: E402
from prunelora_keras.interop.torch_models import build_torch_model  # noqa: E402
from prunelora_keras.models import build_model  # noqa: E402

CONFIGS = [ModelConfig("resnet50", width=0.125), ModelConfig("resnet18", width=0.125),
           ModelConfig("vit", patch_size=4, dim=32, depth=2, heads=4, mlp_dim=64)]


def _randomise_keras(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.variables:
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
        elif v.dtype == "float32":
            v.assign(rng.normal(scale=0.2, size=v.shape).astype("float32"))


def _rel_close(a, b, rtol=1e-4):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_keras_to_torch_equal_logits(cfg):
    model = build_model(cfg, 10, (16, 16, 3))
    _randomise_keras(model, 0)
    tmodel = build_torch_model(cfg, 10, 16).eval()
    tmodel.load_state_dict(keras_to_state_dict(model), strict=True)
    x = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    got = tmodel(torch.tensor(x.transpose(0, 3, 1, 2))).detach().numpy()
    _rel_close(got, expected)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_torch_to_keras_equal_logits(cfg):
    torch.manual_seed(0)
    tmodel = build_torch_model(cfg, 10, 16)
    with torch.no_grad():  # non-trivial statistics and head so the comparison means something
        for name, buf in tmodel.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.2)
        for name, p in tmodel.named_parameters():
            if name.startswith("head"):
                p.normal_(0, 0.2)
    tmodel.eval()
    model = build_model(cfg, 10, (16, 16, 3))
    load_state_dict_into_keras(model, tmodel.state_dict())
    x = np.random.default_rng(2).normal(size=(4, 16, 16, 3)).astype("float32")
    expected = tmodel(torch.tensor(x.transpose(0, 3, 1, 2))).detach().numpy()
    _rel_close(keras.ops.convert_to_numpy(model(x, training=False)), expected)


def test_mismatches_name_the_first_tensor():
    cfg = CONFIGS[2]
    model = build_model(cfg, 10, (16, 16, 3))
    state = keras_to_state_dict(model)
    state["blocks.0.attn.out_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="blocks.0.attn.out_proj.weight"):
        load_state_dict_into_keras(model, state)
    state = keras_to_state_dict(model)
    del state["final_ln.weight"]
    with pytest.raises(KeyError, match="final_ln.weight"):
        load_state_dict_into_keras(model, state)


def test_airbench_matches_its_pytorch_twin_in_both_directions_and_in_training_mode():
    """Logits (inference and training mode) and the BatchNorm running statistics after one training
    forward agree: eps 1e-12, PyTorch momentum 0.4 = Keras 0.6, no scale; the 1/9 logit scale."""
    from prunelora_keras.interop.torch_models import Airbench
    from prunelora_keras.models import airbench

    model = airbench(10, (32, 32, 3), widths=(8, 16, 16), seed=0)
    _randomise_keras(model, 3)
    net = Airbench(widths=(8, 16, 16))
    net.load_state_dict(keras_to_state_dict(model), strict=True)
    x = np.random.default_rng(4).normal(size=(4, 32, 32, 3)).astype("float32")
    tx = torch.tensor(x.transpose(0, 3, 1, 2))
    _rel_close(net.eval()(tx).detach().numpy(), keras.ops.convert_to_numpy(model(x, training=False)))
    _rel_close(net.train()(tx).detach().numpy(), keras.ops.convert_to_numpy(model(x, training=True)), rtol=1e-3)
    bn, tbn = model.get_layer("group2_bn1"), net.group2.norm1
    _rel_close(tbn.running_mean.numpy(), keras.ops.convert_to_numpy(bn.moving_mean))
    assert all(not p.requires_grad for p in (net.whiten.weight, tbn.weight))
    back = airbench(10, (32, 32, 3), widths=(8, 16, 16), seed=1)
    load_state_dict_into_keras(back, net.state_dict())
    _rel_close(keras.ops.convert_to_numpy(back(x, training=False)), net.eval()(tx).detach().numpy())
    state = net.state_dict()
    state["group1.norm1.weight"] = state["group1.norm1.weight"] * 2  # a scale Keras has no place for
    with pytest.raises(ValueError, match="group1.norm1.weight"):
        load_state_dict_into_keras(back, state)
