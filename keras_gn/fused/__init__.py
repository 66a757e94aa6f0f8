"""The fused Group Normalization TensorFlow op: loading, Python wrapper, gradient.

`group_norm` here computes what `keras_gn.ops.group_norm` computes (plus an
optional fused ReLU/SiLU) in one C++ kernel per direction; see
`custom_ops/group_norm_op.cc`. The op is compiled on first use (`builder.py`);
if that is impossible, `load()` returns None, logs one line, and the layer
uses the composite TensorFlow recipe instead.
"""

import logging

import tensorflow as tf

from keras_gn.fused.builder import BuildError
from keras_gn.fused.builder import build

ACTIVATIONS = ("none", "relu", "silu")

_logger = logging.getLogger("keras_gn")
_state = {"module": None, "error": None, "tried": False}


def load():
    """Returns the loaded op module, or None when the op cannot be built.

    Compiles on the first call if needed; never raises. The reason for a
    failure is kept in `unavailable_reason()` and logged once.
    """
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["module"] = tf.load_op_library(str(build()))
        except (BuildError, OSError, tf.errors.OpError) as error:
            _state["error"] = str(error)
            _logger.warning(
                "keras_gn: the fused GroupNormalization op is unavailable (%s); "
                "using the composite TensorFlow implementation. "
                "`python -m keras_gn.fused build` shows the details.",
                str(error).splitlines()[0],
            )
    return _state["module"]


def unavailable_reason():
    """Why `load()` returned None, or None if it did not (or was not called)."""
    return _state["error"]


def group_norm(x, gamma, beta, *, groups, epsilon, channels_last, activation="none"):
    """Fused `act(GN(x) * gamma + beta)`; differentiable in x, gamma and beta.

    Args:
        x: float32, float16 or bfloat16 tensor of rank 3 to 5.
        gamma, beta: float32 tensors of shape `(C,)`.
        groups: number of groups, dividing C.
        epsilon: added to the variance.
        channels_last: whether the channels are the last axis (else axis 1).
        activation: "none", "relu" or "silu".

    Returns:
        `y` with the shape and dtype of `x`.

    Raises:
        RuntimeError: when the op is unavailable (see `unavailable_reason`).
    """
    module = load()
    if module is None:
        raise RuntimeError(
            "keras_gn: the fused GroupNormalization op is unavailable: "
            f"{unavailable_reason()}"
        )
    y, _, _ = module.keras_gn_group_norm(
        x,
        gamma,
        beta,
        groups=groups,
        epsilon=epsilon,
        channels_last=channels_last,
        activation=activation,
    )
    return y


@tf.RegisterGradient("KerasGnGroupNorm")
def _group_norm_grad(op, dy, unused_dmean, unused_drstd):
    # mean and rstd are auxiliary outputs for this gradient; they are not
    # differentiated through.
    x, gamma, beta = op.inputs
    _, mean, rstd = op.outputs
    return _state["module"].keras_gn_group_norm_grad(
        dy,
        x,
        gamma,
        beta,
        mean,
        rstd,
        groups=op.get_attr("groups"),
        channels_last=op.get_attr("channels_last"),
        activation=op.get_attr("activation"),
    )
