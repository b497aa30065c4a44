"""Keras <-> PyTorch weight conversion for the ResNets, the SimpleViT and airbench.

``keras_to_state_dict(model)`` gives a state dict for ``interop.torch_models`` (numpy arrays in,
torch tensors out); ``load_state_dict_into_keras(model, state_dict)`` goes back. Layouts differ:
Keras kernels are (kh, kw, in, out) and (in, out), torch weights (out, in, kh, kw) and (out, in);
the fused q|k|v Dense maps to MultiheadAttention's ``in_proj_weight``. LoRA layers are merged
first. A name or shape mismatch raises naming the first offending tensor.
"""

from __future__ import annotations

import re

import keras
import numpy as np


def torch_prefix(name: str) -> str | None:
    """The torch module path of a Keras layer (None for layers without weights in torch)."""
    rules = [
        (r"stem_conv", "conv1"), (r"stem_bn", "bn1"), (r"head", None),
        (r"stage(\d+)_block(\d+)_(conv|bn)(\d)", lambda m: f"layer{m[1]}.{int(m[2]) - 1}.{m[3]}{m[4]}"),
        (r"stage(\d+)_block(\d+)_shortcut_conv", lambda m: f"layer{m[1]}.{int(m[2]) - 1}.shortcut.0"),
        (r"stage(\d+)_block(\d+)_shortcut_bn", lambda m: f"layer{m[1]}.{int(m[2]) - 1}.shortcut.1"),
        (r"whiten", "whiten"), (r"group(\d)_conv(\d)", lambda m: f"group{m[1]}.conv{m[2]}"),
        (r"group(\d)_bn(\d)", lambda m: f"group{m[1]}.norm{m[2]}"),
        (r"patch_embed", "patch_embed"), (r"final_ln", "final_ln"),
        (r"block(\d+)_(ln1|ln2)", lambda m: f"blocks.{m[1]}.{m[2]}"),
        (r"block(\d+)_attn_qkv", lambda m: f"blocks.{m[1]}.attn.in_proj_"),
        (r"block(\d+)_attn_out", lambda m: f"blocks.{m[1]}.attn.out_proj"),
        (r"block(\d+)_mlp_fc1", lambda m: f"blocks.{m[1]}.mlp.0"),
        (r"block(\d+)_mlp_fc2", lambda m: f"blocks.{m[1]}.mlp.2"),
    ]
    for pattern, target in rules:
        m = re.fullmatch(pattern, name)
        if m:
            return target(m) if callable(target) else target
    raise KeyError(f"no PyTorch name for Keras layer {name!r}")


def _pairs(model: keras.Model):
    """(torch key, keras variable or kernel array, kind) for every weight."""
    is_resnet = any(layer.name == "stem_conv" for layer in model.layers)
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = torch_prefix(layer.name)
        if layer.name == "head":
            prefix = "linear" if is_resnet else "head"
        merged = getattr(layer, "merged_kernel_numpy", None)  # a LoRA layer: its merged kernel, on the host
        kernel = merged() if merged is not None else getattr(layer, "kernel", None)
        if isinstance(layer, keras.layers.BatchNormalization):
            for key, var in (("weight", layer.gamma), ("bias", layer.beta), ("running_mean", layer.moving_mean),
                             ("running_var", layer.moving_variance)):
                if var is None:  # scale=False (airbench): torch's BatchNorm keeps a weight of ones
                    yield f"{prefix}.{key}", layer.beta, "ones"
                else:
                    yield f"{prefix}.{key}", var, "vector"
        elif isinstance(layer, keras.layers.LayerNormalization):
            yield f"{prefix}.weight", layer.gamma, "vector"
            yield f"{prefix}.bias", layer.beta, "vector"
        elif prefix.endswith("in_proj_"):
            yield f"{prefix}weight", (layer, kernel), "dense"
            yield f"{prefix}bias", layer.bias, "vector"
        elif isinstance(layer, keras.layers.Conv2D):
            yield f"{prefix}.weight", (layer, kernel), "conv"
            if layer.bias is not None:
                yield f"{prefix}.bias", layer.bias, "vector"
        elif isinstance(layer, keras.layers.Dense):
            yield f"{prefix}.weight", (layer, kernel), "dense"
            if layer.bias is not None:
                yield f"{prefix}.bias", layer.bias, "vector"


def keras_to_state_dict(model: keras.Model) -> dict:
    """A torch state dict (tensors) for the matching ``interop.torch_models`` model."""
    import torch

    out = {}
    for key, item, kind in _pairs(model):
        value = keras.ops.convert_to_numpy(item[1] if isinstance(item, tuple) else item)
        if kind == "ones":
            value = np.ones_like(value)
        elif kind == "conv":
            value = value.transpose(3, 2, 0, 1)
        elif kind == "dense":
            value = value.T
        out[key] = torch.tensor(np.ascontiguousarray(value))
    return out


def load_state_dict_into_keras(model: keras.Model, state_dict: dict) -> None:
    """Load a torch state dict into a plain (un-adapted) Keras model, checking names and shapes."""
    state = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    used = set()
    for key, item, kind in _pairs(model):
        if key not in state:
            raise KeyError(f"state dict lacks {key!r} (needed by the Keras model)")
        value = state[key].detach().cpu().numpy() if hasattr(state[key], "detach") else np.asarray(state[key])
        if kind == "conv":
            value = value.transpose(2, 3, 1, 0)
        elif kind == "dense":
            value = value.T
        var = item[0].kernel if isinstance(item, tuple) else item
        if kind == "ones":
            if not np.all(value == 1):
                raise ValueError(f"{key!r} is not all ones, and the Keras BatchNormalization has no scale (scale=False)")
            used.add(key)
            continue
        if tuple(var.shape) != value.shape:
            raise ValueError(f"shape mismatch at {key!r}: torch gives {value.shape}, Keras expects {tuple(var.shape)}")
        var.assign(value.astype(var.dtype))
        used.add(key)
    extra = sorted(set(state) - used)
    if extra:
        raise KeyError(f"state dict has tensors the Keras model does not: first {extra[0]!r}")
