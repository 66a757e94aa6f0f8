"""The fused Group Normalization TensorFlow op: loading, Python wrapper, gradient.

`group_norm` here computes what `keras_gn.ops.group_norm` computes (plus an
optional fused ReLU/SiLU) in one C++ kernel per direction; see
`custom_ops/group_norm_op.cc` (CPU) and `custom_ops/group_norm_kernels.cu`
(GPU, compiled in where TensorFlow sees a GPU). The op is compiled on first
use (`builder.py`); if that is impossible, `load()` returns None, logs one
line, and the layer uses the composite TensorFlow recipe instead.
"""

import logging

import tensorflow as tf

from keras_gn.fused.builder import BuildError
from keras_gn.fused.builder import build

ACTIVATIONS = ("none", "relu", "silu")

# The CUDA kernels (custom_ops/group_norm_kernels.cu) passed the GPU check
# on an H200 through their C ABI (benchmarks/gpu/run.sh, no TensorFlow there:
# benchmarks/results/gpu_group_norm.md). The op's TensorFlow GPU kernels call
# the same launchers on TensorFlow's stream and allocator; they compile and
# register (tests/keras_gn/fused/test_cuda_build.py) but have not yet run in
# TensorFlow on a GPU here. Until then implementation="auto" keeps the
# composite recipe on GPUs, unless `python -m keras_gn.fused verify` has
# passed on this machine's GPU (`gpu_op_verified`); "fused" uses the op.
TENSORFLOW_GPU_OP_VERIFIED = False

_logger = logging.getLogger("keras_gn")
_state = {"module": None, "error": None, "tried": False, "cuda": False, "path": None}


def gpu_visible():
    """Whether TensorFlow sees a GPU (then the op is built with CUDA kernels)."""
    return bool(tf.config.list_physical_devices("GPU"))


def load():
    """Returns the loaded op module, or None when the op cannot be built.

    Compiles on the first call if needed; never raises. Where TensorFlow sees
    a GPU, the library is built with the CUDA kernels too (CPU and GPU kernels
    in one library); without them the op would run on the CPU, so a failed
    CUDA build means no fused op. The reason for a failure is kept in
    `unavailable_reason()` and logged once.
    """
    if not _state["tried"]:
        _state["tried"] = True
        cuda = _state["cuda"] = gpu_visible()
        try:
            path = build(cuda=cuda)
            _state["module"] = tf.load_op_library(str(path))
            _state["path"] = path
        except (BuildError, OSError, tf.errors.OpError) as error:
            _state["error"] = str(error)
            if cuda:
                _logger.warning(
                    "keras_gn: the fused GroupNormalization op is unavailable on the GPU (%s); "
                    "using the composite TensorFlow implementation there. "
                    "`python -m keras_gn.fused build --cuda` shows the details.",
                    str(error).splitlines()[0],
                )
            else:
                _logger.warning(
                    "keras_gn: the fused GroupNormalization op is unavailable (%s); "
                    "using the composite TensorFlow implementation. "
                    "`python -m keras_gn.fused build` shows the details.",
                    str(error).splitlines()[0],
                )
    return _state["module"]


def gpu_op_verified():
    """Whether `implementation="auto"` may use the op on the visible GPUs:
    `TENSORFLOW_GPU_OP_VERIFIED`, or a passing `python -m keras_gn.fused
    verify` record for the library loaded here and every visible GPU model.
    Decided once per process; builds the library only where a record exists.
    """
    if TENSORFLOW_GPU_OP_VERIFIED:
        return True
    if "gpu_verified" not in _state:
        from keras_gn.fused import verify

        names = verify.gpu_names()
        verified = False
        if names and set(names) <= verify.recorded_devices():
            verified = load() is not None and _state["cuda"] and verify.is_verified(loaded_library(), names)
        _state["gpu_verified"] = verified
    return _state["gpu_verified"]


def loaded_library():
    """The path of the library `load()` loaded, or None."""
    return _state["path"]


def has_gpu_kernels():
    """Whether the loaded library was built with the CUDA kernels."""
    return _state["module"] is not None and _state["cuda"]


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
