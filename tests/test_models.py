import numpy as np
import pytest
import keras

from prunelora_keras.experiment.config import ModelConfig
from prunelora_keras.models import airbench, build_model, resnet18, resnet50, simple_vit
from prunelora_keras.models.layers import FastConv2D, FastMaxPool2D, PointwiseConv2D
from prunelora_keras.models.vit import DotProductAttention, posemb_sincos_2d


def n_trainable(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def test_paper_sizes():
    assert n_trainable(resnet50()) == 23_520_842  # REFERENCE.md: 23.5 M (torch's parameter count)
    assert n_trainable(resnet18()) == 11_173_962
    assert n_trainable(simple_vit()) == 21_317_002  # REFERENCE.md: about 21.3 M


def test_layer_names_are_stable():
    r = resnet50(width=0.125)
    names = {layer.name for layer in r.layers}
    convs = [l.name for l in r.layers if isinstance(l, keras.layers.Conv2D)]
    assert {"stem_conv", "stage3_block2_conv2", "stage1_block1_shortcut_conv", "stage4_block3_conv3", "head"} <= names
    assert len([n for n in convs if "_block" in n and "shortcut" not in n]) == 48  # the 48 bottleneck convs
    assert len(convs) == 53  # + stem + 4 shortcuts
    v = simple_vit(depth=12, dim=48, heads=6, mlp_dim=96)
    vnames = {layer.name for layer in v.layers}
    assert {"patch_embed", "block0_attn_qkv", "block11_attn_out", "block11_mlp_fc2", "final_ln", "head"} <= vnames
    assert v.get_layer("block11_attn_qkv").kernel.shape == (48, 144)


def _np_conv(x, w, stride, pad):
    """Independent NHWC/HWIO convolution with symmetric zero padding (PyTorch's padding=pad)."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[:2]
    oh = (x.shape[1] - kh) // stride + 1
    ow = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
    return out


def test_pointwise_conv_equals_convolution():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 6, 5)).astype("float32")
    for stride in (1, 2):
        layer = PointwiseConv2D(7, 1, strides=stride, use_bias=False)
        y = keras.ops.convert_to_numpy(layer(x))
        np.testing.assert_allclose(y, _np_conv(x, keras.ops.convert_to_numpy(layer.kernel), stride, 0), rtol=1e-5, atol=1e-5)


def test_airbench_has_airbench94s_shape_and_initialisation():
    model = airbench()
    # trainable: whitening bias 24; convs 24*64*9, 64*64*9, 64*256*9, 256*256*9 (x3); BN biases; head 256*10
    convs = 24 * 64 * 9 + 64 * 64 * 9 + 64 * 256 * 9 + 3 * 256 * 256 * 9
    assert n_trainable(model) == 24 + convs + 2 * (64 + 256 + 256) + 256 * 10
    assert [model.get_layer(n).output.shape[1] for n in ("whiten", "group1_pool", "group2_pool", "group3_pool", "pool")] \
        == [31, 15, 7, 3, 1]
    kernel = keras.ops.convert_to_numpy(model.get_layer("group2_conv1").kernel)  # 64 -> 256: identity on the first 64
    assert np.array_equal(kernel[1, 1, :, :64], np.eye(64)) and np.abs(kernel[..., :64]).sum() == 64
    assert 0 < np.abs(kernel[..., 64:]).max() <= np.float32(1 / np.sqrt(9 * 64))  # the bound, rounded to float32
    bn = model.get_layer("group1_bn1")
    assert bn.gamma is None and bn.epsilon == 1e-12 and bn.momentum == 0.6


def test_fast_layers_compute_what_the_plain_layers_compute():
    """On any backend: the forward of FastConv2D / FastMaxPool2D equals Conv2D / MaxPooling2D's."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 9, 9, 4)).astype("float32")
    for kwargs in ({"kernel_size": 3, "padding": "same"}, {"kernel_size": 3, "strides": 2},
                   {"kernel_size": 2}, {"kernel_size": 1, "strides": 2}):
        fast, plain = FastConv2D(5, **kwargs), keras.layers.Conv2D(5, **kwargs)
        fast.build(x.shape), plain.build(x.shape)
        plain.set_weights(fast.get_weights())
        np.testing.assert_allclose(keras.ops.convert_to_numpy(fast(x)), keras.ops.convert_to_numpy(plain(x)),
                                   rtol=1e-5, atol=1e-5)
    for pool in (2, 3):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(FastMaxPool2D(pool)(x)),
                                      keras.ops.convert_to_numpy(keras.layers.MaxPooling2D(pool)(x)))


def test_strided_conv_pads_like_pytorch():
    """Stage-2's first 3x3 conv (stride 2) must pad one pixel on every side, as torch's padding=1."""
    model = resnet18(width=0.125, input_shape=(8, 8, 3))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    inner = keras.Model(model.input, [model.get_layer("stage1_block2_out").output,
                                      model.get_layer("stage2_block1_conv1").output])
    block_in, conv_out = (keras.ops.convert_to_numpy(t) for t in inner(x))
    w = keras.ops.convert_to_numpy(model.get_layer("stage2_block1_conv1").kernel)
    np.testing.assert_allclose(conv_out, _np_conv(block_in, w, 2, 1), rtol=1e-4, atol=1e-4)


def test_posemb_matches_formula():
    pe = posemb_sincos_2d(2, 3, 8)
    assert pe.shape == (6, 8)
    omega = 1.0 / 10000 ** (np.arange(2) / 1)
    token = 4  # row 1, column 1 of a 2x3 grid
    y, x = 1, 1
    expected = np.concatenate([np.sin(x * omega), np.cos(x * omega), np.sin(y * omega), np.cos(y * omega)])
    np.testing.assert_allclose(pe[token], expected, rtol=1e-6)


def test_attention_matches_numpy():
    rng = np.random.default_rng(2)
    b, t, heads, hd = 2, 5, 3, 4
    qkv = rng.normal(size=(b, t, 3 * heads * hd)).astype("float32")
    out = keras.ops.convert_to_numpy(DotProductAttention(heads)(qkv))
    q, k, v = np.split(qkv, 3, axis=-1)
    expected = np.zeros((b, t, heads * hd))
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        s = q[..., sl] @ k[..., sl].transpose(0, 2, 1) / np.sqrt(hd)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        expected[..., sl] = p @ v[..., sl]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_vit_head_starts_at_zero():
    v = simple_vit(input_shape=(8, 8, 3), patch_size=2, dim=16, depth=1, heads=2, mlp_dim=32)
    logits = keras.ops.convert_to_numpy(v(np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype("float32")))
    np.testing.assert_array_equal(logits, 0.0)


@pytest.mark.parametrize("cfg", [ModelConfig("resnet50", width=0.0625), ModelConfig("resnet18", width=0.125),
                                 ModelConfig("vit", patch_size=2, dim=16, depth=2, heads=2, mlp_dim=32)])
def test_keras_save_load_roundtrip(tmp_path, cfg):
    model = build_model(cfg, 10, (8, 8, 3))
    for v in model.trainable_variables:  # non-zero head so the check means something
        v.assign(np.random.default_rng(0).normal(scale=0.1, size=v.shape).astype("float32"))
    x = np.random.default_rng(3).normal(size=(4, 8, 8, 3)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)),
                               rtol=1e-5, atol=1e-6)
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
