"""Checks the fused op on this machine's device against float64 and records
the result, so that `implementation="auto"` may use the CUDA kernels there.

    python -m keras_gn.fused verify

runs the op (forward and gradients) over shapes, layouts, dtypes, group counts
and fused activations on the first GPU TensorFlow sees (else the CPU) and
compares it with the composite recipe computed in float64 on the CPU. Where a
GPU passes every case, a record is written next to the compiled library
(`<library>.verified.json`, naming the GPU); from then on "auto" uses the
fused op on that GPU model with that library. Nothing is recorded for the
CPU (the fused CPU op needs no verification to be used) or after a failure.
"""

import datetime
import json
import pathlib

import numpy as np
import tensorflow as tf

# (shape, channel axis, groups): ranks 3 to 5, both layouts, odd sizes,
# LayerNorm- and InstanceNorm-like groupings.
CASES = (
    ((2, 19, 32), -1, 8),
    ((2, 32, 19), 1, 4),
    ((3, 7, 9, 64), -1, 32),
    ((3, 64, 7, 9), 1, 32),
    ((2, 5, 6, 48), -1, 1),
    ((2, 16, 5, 6), 1, 16),
    ((2, 3, 4, 5, 32), -1, 4),
    ((2, 32, 3, 4, 5), 1, 8),
    ((2, 24, 24, 96), -1, 32),
    ((2, 96, 24, 24), 1, 32),
)
DTYPES = ("float32", "float16", "bfloat16")
ACTIVATIONS = ("none", "relu", "silu")
# |got - want| <= atol * scale + rtol * |want|; scale 1 for y (of order 1),
# max |want| for the gradients (the test suite's tolerances).
TOLERANCES = {
    "float32": {"y": (1e-5, 1e-5), "dx": (1e-4, 1e-4)},
    "float16": {"y": (2e-3, 4e-3), "dx": (2e-3, 4e-3)},
    "bfloat16": {"y": (1.6e-2, 3e-2), "dx": (1.6e-2, 3e-2)},
}
PARAMETER_TOLERANCE = 1e-4  # dgamma, dbeta: float32 sums, relative to their max
EPSILON = 1e-5


def record_path(library):
    return pathlib.Path(str(library) + ".verified.json")


def gpu_names():
    """The model names of the GPUs TensorFlow sees, in order."""
    names = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        names.append(details.get("device_name", device.name))
    return names


def recorded_devices():
    """The devices of every passing record in the cache (cheap: no build)."""
    from keras_gn.fused import builder

    devices = set()
    for path in (builder.cache_dir() / "ops").glob("*.verified.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("passed") is True:
            devices.update(record.get("devices", ()))
    return devices


def is_verified(library, devices):
    """Whether a passing record exists for this library and every device."""
    if library is None or not devices:
        return False
    try:
        record = json.loads(record_path(library).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("passed") is True
        and record.get("library") == pathlib.Path(library).name
        and set(devices) <= set(record.get("devices", ()))
    )


def write_record(library, devices, report):
    record = {
        "library": pathlib.Path(library).name,
        "devices": list(devices),
        "passed": report["passed"],
        "cases": report["cases"],
        "tensorflow": tf.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    record_path(library).write_text(json.dumps(record, indent=1))


def _within(got, want, rtol, atol, scale=1.0):
    error = np.abs(np.asarray(got, np.float64) - want)
    allowed = atol * scale + rtol * np.abs(want)
    return bool(np.all(np.isfinite(got))) and bool(np.all(error <= allowed)), float(error.max())


def check_case(module, shape, axis, groups, dtype, activation, device):
    """One case, forward and gradients; returns a dict with 'pass'."""
    from keras_gn import ops

    rng = np.random.default_rng(len(shape) * 1000 + groups)
    channels = shape[axis]
    x64 = rng.normal(1.0, 2.0, size=shape)
    x64 = np.asarray(tf.cast(tf.cast(x64, dtype), tf.float64))  # the values the op sees
    gamma = rng.normal(size=channels).astype("float32")
    beta = rng.normal(size=channels).astype("float32")
    dy64 = np.asarray(tf.cast(tf.cast(rng.normal(size=shape), dtype), tf.float64))
    act = None if activation == "none" else activation

    with tf.device("/CPU:0"):
        xr, gr, br = (tf.constant(v, tf.float64) for v in (x64, gamma, beta))
        with tf.GradientTape() as tape:
            tape.watch([xr, gr, br])
            want_y = ops.group_norm(xr, gr, br, groups=groups, axis=axis, epsilon=EPSILON,
                                    activation=act, implementation="composite")
        want_dx, want_dg, want_db = (g.numpy() for g in tape.gradient(want_y, [xr, gr, br], tf.constant(dy64)))
    channels_last = axis in (-1, len(shape) - 1)
    with tf.device(device):
        # float32 holds the float16 / bfloat16 values exactly: the cast is exact
        x = tf.cast(tf.constant(x64.astype("float32")), dtype)
        dy = tf.cast(tf.constant(dy64.astype("float32")), dtype)
        g, b = tf.constant(gamma), tf.constant(beta)
        y, mean, rstd = module.keras_gn_group_norm(x, g, b, groups=groups, epsilon=EPSILON,
                                                   channels_last=channels_last, activation=activation)
        dx, dg, db = module.keras_gn_group_norm_grad(dy, x, g, b, mean, rstd, groups=groups,
                                                     channels_last=channels_last, activation=activation)
        ran_on = y.device
    y_ok, y_err = _within(tf.cast(y, tf.float64), want_y.numpy(), *TOLERANCES[dtype]["y"])
    dx_ok, dx_err = _within(tf.cast(dx, tf.float64), want_dx, *TOLERANCES[dtype]["dx"],
                            scale=float(np.abs(want_dx).max()))
    dg_ok, _ = _within(dg, want_dg, PARAMETER_TOLERANCE, PARAMETER_TOLERANCE, float(np.abs(want_dg).max()))
    db_ok, _ = _within(db, want_db, PARAMETER_TOLERANCE, PARAMETER_TOLERANCE, float(np.abs(want_db).max()))
    return {
        "shape": list(shape), "axis": axis, "groups": groups, "dtype": dtype, "activation": activation,
        "device": ran_on, "max_error_y": y_err, "max_error_dx": dx_err,
        "pass": y_ok and dx_ok and dg_ok and db_ok,
    }


def run(module, device, quick=False):
    """Every case on `device`; returns {'passed', 'cases', 'failures',
    'devices' (where the op ran)}."""
    cases = CASES[::3] if quick else CASES
    activations = ("silu",) if quick else ACTIVATIONS
    results = []
    for shape, axis, groups in cases:
        for dtype in DTYPES:
            for activation in activations:
                try:
                    results.append(check_case(module, shape, axis, groups, dtype, activation, device))
                except (tf.errors.OpError, ValueError) as error:  # one failure must not hide the rest
                    results.append({"shape": list(shape), "axis": axis, "groups": groups, "dtype": dtype,
                                    "activation": activation, "pass": False,
                                    "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"})
    failures = [r for r in results if not r["pass"]]
    devices = sorted({r["device"] for r in results if "device" in r})
    return {"passed": not failures, "cases": len(results), "failures": failures, "devices": devices}
