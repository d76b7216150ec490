"""How each supported ``torch.nn`` module becomes graph operations (shared by every front-end)."""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor

from ..activations import Activation
from ..errors import InputError, UnsupportedModuleError
from .builder import GraphBuilder, Value

#: element-wise activation modules; relevance passes through them unchanged
ELEMENTWISE_TYPES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Tanhshrink, nn.LogSigmoid,
)
BATCH_NORM_TYPES: tuple[type, ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
DROPOUT_TYPES: tuple[type, ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
#: modules that leave values and node order unchanged (dropout only in eval mode)
PASSTHROUGH_TYPES: tuple[type, ...] = (nn.Identity, *DROPOUT_TYPES)
#: modules whose output depends on the training flag: they must be in eval mode to be lowered
MODE_DEPENDENT_TYPES: tuple[type, ...] = (*BATCH_NORM_TYPES, *DROPOUT_TYPES)
#: modules that reshape without reordering nodes
RESHAPE_TYPES: tuple[type, ...] = (nn.Flatten, nn.Unflatten)

Handler = Callable[[GraphBuilder, str, nn.Module, Value, tuple[int, ...], bool], Value]


def effective_parameter(module: nn.Module, name: str) -> Tensor | None:
    """The parameter ``name`` as the module uses it: ``<name>_orig * <name>_mask`` when pruned.

    ``torch.nn.utils.prune`` keeps the trained values in ``weight_orig`` and the mask in
    ``weight_mask``, and recomputes ``weight`` only in a forward pre-hook; reading the product
    gives the effective weights even when ``weight`` is stale.
    """
    with torch.no_grad():
        original = getattr(module, f"{name}_orig", None)
        mask = getattr(module, f"{name}_mask", None)
        if isinstance(original, Tensor) and isinstance(mask, Tensor):
            return (original * mask).detach().clone()
        value = getattr(module, name, None)
        return None if value is None else value.detach().clone()


def _linear(builder: GraphBuilder, path: str, module: nn.Linear, value: Value, out_shape, exclusive) -> Value:
    return builder.linear(path, type(module), value, effective_parameter(module, "weight"),
                          effective_parameter(module, "bias"))


def _conv(builder: GraphBuilder, path: str, module: nn.Module, value: Value, out_shape, exclusive) -> Value:
    if module.padding_mode != "zeros":
        raise UnsupportedModuleError(f"{path} ({type(module).__name__}): padding_mode={module.padding_mode!r} is not supported "
                         "(only 'zeros')")
    padding = module.padding
    if isinstance(padding, str):  # 'same' / 'valid': recover the numbers from the shapes
        padding = _explicit_padding(module, value.shape, out_shape)
    return builder.conv(path, type(module), value, effective_parameter(module, "weight"),
                        effective_parameter(module, "bias"), out_shape, module.stride, padding, module.dilation,
                        module.groups)


def _explicit_padding(module: nn.Module, in_shape, out_shape) -> tuple[int, ...]:
    if module.padding == "valid":
        return (0,) * (len(in_shape) - 1)
    pads = []
    for k, d in zip(module.kernel_size, module.dilation):
        total = d * (k - 1)
        if total % 2:
            raise UnsupportedModuleError(f"{type(module).__name__} with padding='same' and an even receptive field pads "
                             "asymmetrically, which is not supported")
        pads.append(total // 2)
    return tuple(pads)


def _as_tuple(value, dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def _max_pool(builder: GraphBuilder, path: str, module: nn.Module, value: Value, out_shape, exclusive) -> Value:
    dims = len(value.shape) - 1
    if getattr(module, "return_indices", False):
        raise UnsupportedModuleError(f"{path} ({type(module).__name__}): return_indices=True is not supported")
    kernel = _as_tuple(module.kernel_size, dims)
    stride = _as_tuple(module.stride if module.stride is not None else module.kernel_size, dims)
    return builder.max_pool(path, type(module), value, out_shape, kernel, stride, _as_tuple(module.padding, dims),
                            _as_tuple(module.dilation, dims), module.ceil_mode)


def _avg_pool(builder: GraphBuilder, path: str, module: nn.Module, value: Value, out_shape, exclusive) -> Value:
    dims = len(value.shape) - 1
    padding = _as_tuple(module.padding, dims)
    if module.ceil_mode or (not module.count_include_pad and any(padding)):
        raise UnsupportedModuleError(f"{path} ({type(module).__name__}): ceil_mode=True and count_include_pad=False with "
                         "padding are not supported")
    kernel = _as_tuple(module.kernel_size, dims)
    stride = _as_tuple(module.stride if module.stride is not None else module.kernel_size, dims)
    return builder.avg_pool(path, type(module), value, out_shape, kernel, stride, padding,
                            getattr(module, "divisor_override", None))


def _adaptive_avg_pool(builder: GraphBuilder, path: str, module: nn.Module, value: Value, out_shape, exclusive) -> Value:
    return builder.adaptive_avg_pool(path, type(module), value, out_shape)


def _batch_norm(builder: GraphBuilder, path: str, module: nn.Module, value: Value, out_shape, exclusive) -> Value:
    check_per_sample(path, module)
    with torch.no_grad():
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight
        shift = -module.running_mean * scale
        if module.bias is not None:
            shift = shift + module.bias
    return builder.batch_norm(path, type(module), value, scale.detach().clone(), shift.detach().clone(),
                              fold=exclusive)


def out_of_place(module: nn.Module) -> nn.Module:
    """A shallow copy of an element-wise module that computes the same function without ``inplace``.

    An in-place activation would overwrite the pre-activation that the rules' denominators read;
    the copy also keeps the graph independent of later changes to the user's module.
    """
    twin = copy.copy(module)
    if getattr(twin, "inplace", False):
        twin.inplace = False
    return twin


def _activation(builder: GraphBuilder, path: str, module: nn.Module, value: Value, out_shape, exclusive) -> Value:
    # the module's forward itself: calling the module would run torch's hook machinery per level
    return builder.activation(path, value, Activation(type(module).__name__, out_of_place(module).forward), exclusive)


def normalized_features(path: str, module: nn.Module, value: Value) -> int:
    """The number of elements a layer or RMS normalization normalizes together: its trailing
    ``normalized_shape``, which must end ``value``'s shape."""
    shape = tuple(module.normalized_shape)
    if tuple(value.shape[len(value.shape) - len(shape):]) != shape:
        raise UnsupportedModuleError(f"{path} ({type(module).__name__}) normalizes the trailing shape {shape}, "
                                     f"its input has shape {value.shape}")
    return math.prod(shape)


def _layer_norm(builder: GraphBuilder, path: str, module: nn.Module, value: Value, out_shape, exclusive) -> Value:
    features = normalized_features(path, module, value)
    return builder.layer_norm(path, type(module), value, features, effective_parameter(module, "weight"),
                              effective_parameter(module, "bias"), module.eps)


def _rms_norm(builder: GraphBuilder, path: str, module: nn.Module, value: Value, out_shape, exclusive) -> Value:
    features = normalized_features(path, module, value)
    eps = torch.finfo(builder.dtype).eps if module.eps is None else module.eps
    return builder.layer_norm(path, type(module), value, features, effective_parameter(module, "weight"), None,
                              eps, center=False)


def _reshape(builder: GraphBuilder, path: str, module: nn.Module, value: Value, out_shape, exclusive) -> Value:
    return builder.reshape(value, out_shape)


def _passthrough(builder: GraphBuilder, path: str, module: nn.Module, value: Value, out_shape, exclusive) -> Value:
    check_per_sample(path, module)
    return value


def check_per_sample(path: str, module: nn.Module) -> None:
    """Refuse a module whose output is not a fixed function of each sample: dropout or batch norm in
    training mode (:class:`~graphlrp.errors.InputError`), batch norm without running statistics
    (:class:`~graphlrp.errors.UnsupportedModuleError`)."""
    if isinstance(module, MODE_DEPENDENT_TYPES) and module.training:
        raise InputError(f"{path} ({type(module).__name__}) is in training mode; call model.eval() first "
                         "(lowering never runs a module in training mode)")
    if isinstance(module, BATCH_NORM_TYPES) and module.running_mean is None:
        raise UnsupportedModuleError(f"{path} ({type(module).__name__}) has no running statistics "
                                     "(track_running_stats=False): it normalizes by each batch's statistics")


HANDLERS: dict[tuple[type, ...], Handler] = {
    (nn.Linear,): _linear,
    (nn.LayerNorm,): _layer_norm,
    (nn.RMSNorm,): _rms_norm,
    (nn.Conv1d, nn.Conv2d, nn.Conv3d): _conv,
    (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d): _max_pool,
    (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d): _avg_pool,
    (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d): _adaptive_avg_pool,
    BATCH_NORM_TYPES: _batch_norm,
    ELEMENTWISE_TYPES: _activation,
    RESHAPE_TYPES: _reshape,
    PASSTHROUGH_TYPES: _passthrough,
}


def handler_for(module: nn.Module) -> Handler | None:
    """The handler of a supported module, or ``None``."""
    for types, handler in HANDLERS.items():
        if isinstance(module, types):
            return handler
    return None


def supported_modules() -> str:
    """Names of the supported module types, for error messages."""
    names = {t.__name__ for types in HANDLERS for t in types} | {"Sequential"}
    return ", ".join(sorted(names))


def unsupported(path: str, module: nn.Module) -> UnsupportedModuleError:
    """The error for a module that cannot be lowered."""
    kind = type(module)
    if isinstance(module, nn.Embedding):
        return UnsupportedModuleError(f"cannot lower module {path!r} (nn.Embedding): a lookup of token ids has no "
                                      "edges; lower the model from the embedding output on, with graphlrp.embed "
                                      "giving its input (see docs/transformers.md)")
    return UnsupportedModuleError(
        f"cannot lower module {path!r} of type {kind.__module__}.{kind.__name__}; supported: {supported_modules()}"
    )
