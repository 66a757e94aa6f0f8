"""GPU check of keras_gn's CUDA Group Normalization kernels (no TensorFlow).

Builds the C-ABI harness (custom_ops/group_norm_kernels.cu +
custom_ops/group_norm_capi.cc) with nvcc and drives it through ctypes with
PyTorch CUDA tensors:

1. correctness against the float64 NumPy reference (tests/reference.py) over
   shapes, layouts, dtypes, group counts, activations, and the gradients
   (dx, dgamma, dbeta); a 1e6 offset; a tensor of more than 2**31 elements;
2. speed: medians of CUDA-event timings of forward and forward + backward,
   next to torch.nn.functional.group_norm (channels-first and channels-last
   input) and a device-to-device copy of the same bytes;
3. one JSON file, `<out>/gpu_group_norm.json`, rewritten after every stage,
   so a failure or a timeout in one stage leaves the others' results.

    python3 benchmarks/gpu/check.py --out DIR     # on the GPU machine (run.sh)
    python3 benchmarks/gpu/check.py --dry-run     # here, on the CPU
    python3 benchmarks/gpu/check.py --summarize benchmarks/results/gpu_group_norm.json

`--dry-run` needs no GPU or nvcc: it builds the grid, checks this file's
torch float64 reference against tests/reference.py, and runs the whole
correctness stage with a CPU stand-in for the kernels (PyTorch float32 math
with the kernels' output conventions), which exercises the driver's code.
"""

import argparse
import ctypes
import json
import math
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests import reference  # noqa: E402  (NumPy only, no TensorFlow)

SOURCES = (ROOT / "custom_ops" / "group_norm_kernels.cu", ROOT / "custom_ops" / "group_norm_capi.cc")
DTYPES = ("float32", "float16", "bfloat16")
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}
ACTIVATIONS = ("none", "relu", "silu")
ACTIVATION_CODES = {"none": 0, "relu": 1, "silu": 2}
EPSILON = 1e-5

# Allowed error against the float64 reference, per input dtype: |got - want|
# <= atol * scale + rtol * |want|, with scale 1 for y (outputs of order 1) and
# max |want| for the gradients. y: the CPU op's test tolerances
# (tests/keras_gn/fused/test_fused_op.py); dx: the same in units of its
# scale (fp32 as the CPU op's gradient test); dgamma / dbeta are float32 sums
# of exactly represented inputs in every dtype.
TOLERANCES = {
    "float32": {"y": (1e-5, 1e-5), "dx": (1e-4, 1e-5), "dgamma": (1e-4, 1e-5), "dbeta": (1e-4, 1e-5)},
    "float16": {"y": (2e-3, 4e-3), "dx": (2e-3, 4e-3), "dgamma": (1e-4, 1e-4), "dbeta": (1e-4, 1e-4)},
    "bfloat16": {"y": (1.6e-2, 3e-2), "dx": (1.6e-2, 3e-2), "dgamma": (1e-4, 1e-4), "dbeta": (1e-4, 1e-4)},
}
STAT_TOLERANCE = 1e-5  # rstd relative; mean in units of the group's standard deviation

# (shape, channels_last, groups): channels-last shapes are (N, S..., C),
# channels-first (N, C, S...).
CORRECTNESS_CASES = [
    ((2, 19, 32), True, 8),  # 1-D signal
    ((2, 32, 19), False, 4),  # odd positions: scalar channels-first path
    ((3, 7, 9, 64), True, 32),
    ((3, 64, 7, 9), False, 32),
    ((2, 5, 6, 48), True, 1),  # LayerNorm-like
    ((2, 16, 5, 6), False, 16),  # InstanceNorm-like
    ((2, 3, 4, 5, 32), True, 4),  # video
    ((2, 32, 3, 4, 5), False, 8),
    ((2, 9, 11, 12), True, 3),  # 12 channels: vectorized fp32, scalar fp16/bf16
    ((2, 9, 11, 24), True, 4),  # fp32: one-pass with scalar loads (6 channels a group)
    ((2, 6, 8, 16), False, 2),  # 128 positions: vectorized everywhere
    ((2, 64, 64, 96), True, 32),  # several chunks per channel
    ((2, 96, 64, 64), False, 32),
    ((1, 4, 4, 40000), True, 5),  # wide channels: several channel tiles
]
UNALIGNED_CASES = [((2, 8, 8, 64), True, 8), ((2, 64, 8, 8), False, 8)]  # pointers off by one element

SPEED_CASES = [  # channels-first shapes; the channels-last runs use the same tensor in NHWC
    ((32, 256, 56, 56), 32),
    ((8, 512, 64, 64), 32),
    ((2, 32, 64, 64, 64), 8),
]


def view(shape, channels_last):
    """The kernels' [n, a, c, b] view of a contiguous tensor."""
    if channels_last:
        return shape[0], math.prod(shape[1:-1]), shape[-1], 1
    return shape[0], 1, shape[1], math.prod(shape[2:])


# ------------------------------------------------------------------ build


def harness_command(nvcc, output, arch="90", defines=()):
    """nvcc's command line; `defines` are NAME=VALUE tuning macros of the
    kernels (KERAS_GN_<NAME>, see the top of group_norm_kernels.cu)."""
    return [
        str(nvcc), "-O3", "-std=c++17", f"-gencode=arch=compute_{arch},code=sm_{arch}",
        *(f"-DKERAS_GN_{define}" for define in defines),
        "-shared", "-Xcompiler", "-fPIC", *map(str, SOURCES), "-o", str(output),
    ]


def build_harness(nvcc, output, arch="90", defines=()):
    """Compiles the harness; returns (ok, seconds, log). Never raises."""
    return finish_build(start_build(nvcc, output, arch, defines))


def start_build(nvcc, output, arch="90", defines=()):
    """Starts nvcc in the background (builds run side by side); see finish_build."""
    command = harness_command(nvcc, output, arch, defines)
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as error:
        process = error
    return command, process, time.time()


def finish_build(build):
    """Waits for start_build's nvcc; returns (ok, seconds, log). Never raises."""
    command, process, start = build
    if isinstance(process, OSError):
        log, ok = f"{type(process).__name__}: {process}", False
    else:
        try:
            log = process.communicate(timeout=600)[0]
            ok = process.returncode == 0
        except subprocess.SubprocessError as error:
            process.kill()
            log, ok = f"{type(error).__name__}: {error}", False
    return ok, time.time() - start, " ".join(command) + "\n" + log


# ---------------------------------------------------------------- harness


class Harness:
    """The C ABI of group_norm_capi.cc on PyTorch CUDA tensors."""

    def __init__(self, path):
        lib = self.lib = ctypes.CDLL(str(path))
        i64, vp, size = ctypes.c_int64, ctypes.c_void_p, ctypes.c_size_t
        for name in ("keras_gn_cuda_forward_workspace_size", "keras_gn_cuda_backward_workspace_size"):
            getattr(lib, name).argtypes = [i64] * 5 + [ctypes.c_int, ctypes.POINTER(size)]
            getattr(lib, name).restype = ctypes.c_int
        lib.keras_gn_cuda_forward.argtypes = [i64] * 5 + [ctypes.c_int, ctypes.c_int, ctypes.c_float] + [vp] * 7 + [size, vp]
        lib.keras_gn_cuda_forward.restype = ctypes.c_int
        lib.keras_gn_cuda_backward.argtypes = [i64] * 5 + [ctypes.c_int, ctypes.c_int] + [vp] * 10 + [size, vp]
        lib.keras_gn_cuda_backward.restype = ctypes.c_int
        lib.keras_gn_cuda_error_string.argtypes = [ctypes.c_int]
        lib.keras_gn_cuda_error_string.restype = ctypes.c_char_p

    def _check(self, code, what):
        if code != 0:
            raise RuntimeError(f"{what}: CUDA error {code}: {self.lib.keras_gn_cuda_error_string(code).decode()}")

    def workspace_bytes(self, dims, groups, dtype, backward=False):
        name = "keras_gn_cuda_backward_workspace_size" if backward else "keras_gn_cuda_forward_workspace_size"
        out = ctypes.c_size_t(0)
        self._check(getattr(self.lib, name)(*dims, groups, DTYPE_CODES[dtype], ctypes.byref(out)), name)
        return out.value

    def forward_fn(self, x, gamma, beta, groups, dims, activation, y=None):
        """A closure running the forward into preallocated outputs; returns (fn, y, mean, rstd)."""
        import torch

        dtype = str(x.dtype).replace("torch.", "")
        y = torch.empty_like(x) if y is None else y
        mean = torch.empty((dims[0], groups), device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        bytes_ = self.workspace_bytes(dims, groups, dtype)
        workspace = torch.empty(max(bytes_, 1), device=x.device, dtype=torch.uint8)
        args = (*dims, groups, DTYPE_CODES[dtype], ACTIVATION_CODES[activation], EPSILON,
                x.data_ptr(), gamma.data_ptr(), beta.data_ptr(), y.data_ptr(), mean.data_ptr(),
                rstd.data_ptr(), workspace.data_ptr(), bytes_)

        def run():
            stream = torch.cuda.current_stream().cuda_stream
            self._check(self.lib.keras_gn_cuda_forward(*args, stream), "forward")

        run.keep = (workspace,)
        return run, y, mean, rstd

    def backward_fn(self, dy, x, gamma, beta, mean, rstd, groups, dims, activation):
        import torch

        dtype = str(x.dtype).replace("torch.", "")
        dx = torch.empty_like(x)
        dgamma = torch.empty_like(gamma)
        dbeta = torch.empty_like(beta)
        bytes_ = self.workspace_bytes(dims, groups, dtype, backward=True)
        workspace = torch.empty(max(bytes_, 1), device=x.device, dtype=torch.uint8)
        args = (*dims, groups, DTYPE_CODES[dtype], ACTIVATION_CODES[activation],
                dy.data_ptr(), x.data_ptr(), gamma.data_ptr(), beta.data_ptr(), mean.data_ptr(),
                rstd.data_ptr(), dx.data_ptr(), dgamma.data_ptr(), dbeta.data_ptr(),
                workspace.data_ptr(), bytes_)

        def run():
            stream = torch.cuda.current_stream().cuda_stream
            self._check(self.lib.keras_gn_cuda_backward(*args, stream), "backward")

        run.keep = (workspace,)
        return run, dx, dgamma, dbeta

    def forward(self, x, gamma, beta, groups, channels_last, activation):
        run, y, mean, rstd = self.forward_fn(x, gamma, beta, groups, view(tuple(x.shape), channels_last), activation)
        run()
        return y, mean, rstd

    def backward(self, dy, x, gamma, beta, mean, rstd, groups, channels_last, activation):
        run, dx, dgamma, dbeta = self.backward_fn(dy, x, gamma, beta, mean, rstd, groups,
                                                  view(tuple(x.shape), channels_last), activation)
        run()
        return dx, dgamma, dbeta


class CpuStandIn:
    """--dry-run: the harness's interface computed with PyTorch on the CPU in
    float32, with the kernels' conventions (mean relative to the group's
    first value). Checks the driver, not the kernels."""

    def forward(self, x, gamma, beta, groups, channels_last, activation):
        import torch

        moved = x.movedim(-1, 1) if channels_last else x
        n, c = moved.shape[:2]
        grouped = moved.float().reshape(n, groups, -1)
        ref = grouped[:, :, :1]
        var, mean = torch.var_mean(grouped - ref, dim=-1, unbiased=False, keepdim=True)
        rstd = torch.rsqrt(var + EPSILON)
        xhat = ((grouped - ref - mean) * rstd).reshape(moved.shape)
        shape = (1, c) + (1,) * (moved.dim() - 2)
        z = xhat * gamma.view(shape) + beta.view(shape)
        y = torch_activation(z, activation)[0].to(x.dtype)
        return (y.movedim(1, -1) if channels_last else y).contiguous(), mean.view(n, groups), rstd.view(n, groups)

    def backward(self, dy, x, gamma, beta, mean, rstd, groups, channels_last, activation):
        import torch

        axis = -1 if channels_last else 1
        dx, dgamma, dbeta = reference.group_norm_grads(
            x.double().numpy(), gamma.double().numpy(), beta.double().numpy(), dy.double().numpy(),
            groups=groups, axis=axis, epsilon=EPSILON, activation=None if activation == "none" else activation)
        return torch.from_numpy(dx).to(x.dtype), torch.from_numpy(dgamma).float(), torch.from_numpy(dbeta).float()


# -------------------------------------------------------------- reference


def torch_activation(z, activation):
    """act(z), act'(z) in PyTorch (the reference's `_activation`)."""
    import torch

    if activation == "relu":
        return torch.clamp_min(z, 0), (z > 0).to(z.dtype)
    if activation == "silu":
        s = torch.sigmoid(z)
        return z * s, s * (1 + z * (1 - s))
    return z, torch.ones_like(z)


def torch_reference(x, gamma, beta, groups, channels_last, activation="none"):
    """GN forward in float64 with PyTorch, on x's device (for tensors too big
    for NumPy); returns y (float64), mean, rstd ([N, G], float64)."""
    import torch

    moved = x.movedim(-1, 1) if channels_last else x
    n, c = moved.shape[:2]
    grouped = moved.double().reshape(n, groups, -1)
    var, mean = torch.var_mean(grouped, dim=-1, unbiased=False, keepdim=True)
    rstd = 1.0 / torch.sqrt(var + EPSILON)
    xhat = ((grouped - mean) * rstd).reshape(moved.shape)
    shape = (1, c) + (1,) * (moved.dim() - 2)
    y = torch_activation(xhat * gamma.double().view(shape) + beta.double().view(shape), activation)[0]
    return (y.movedim(1, -1) if channels_last else y), mean.view(n, groups), rstd.view(n, groups)


def error_report(got, want, rtol, atol, scale=None, mask=None):
    """Max error and the max of |err| / allowed (<= 1 passes)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if scale is None:
        scale = 1.0
    error = np.abs(got - want)
    allowed = atol * scale + rtol * np.abs(want)
    ratio = error / allowed
    if mask is not None:
        error, ratio = error[mask], ratio[mask]
    finite = bool(np.all(np.isfinite(got)))
    worst = float(ratio.max()) if ratio.size else 0.0
    return {
        "max_abs_error": float(error.max()) if error.size else 0.0,
        "max_error_over_tolerance": worst,
        "rtol": rtol, "atol": atol, "scale": float(scale),
        "pass": finite and worst <= 1.0,
    }


# ------------------------------------------------------------ correctness


def random_case(shape, channels_last, dtype, device, seed, offset=0.0, relu_safe=False):
    import torch

    generator = torch.Generator().manual_seed(seed)
    channels = shape[-1] if channels_last else shape[1]
    x = (offset + 1.0 + 2.0 * torch.randn(shape, generator=generator, dtype=torch.float64))
    gamma = torch.randn(channels, generator=generator, dtype=torch.float64)
    beta = torch.randn(channels, generator=generator, dtype=torch.float64)
    dy = torch.randn(shape, generator=generator, dtype=torch.float64)
    torch_dtype = getattr(torch, dtype)
    return (x.to(torch_dtype).to(device), gamma.float().to(device), beta.float().to(device),
            dy.to(torch_dtype).to(device))


def check_case(kernels, shape, channels_last, groups, dtype, activation, device, seed=0, offset=0.0,
               unaligned=False, tolerances=None):
    """Forward and backward of one case against tests/reference.py."""
    import torch

    tol = tolerances or TOLERANCES[dtype]
    x, gamma, beta, dy = random_case(shape, channels_last, dtype, device, seed, offset)
    if unaligned:  # the same values one element into a larger buffer
        def shifted(t):
            buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
            out = buffer[1:].view(t.shape)
            out.copy_(t)
            return out
        x, dy = shifted(x), shifted(dy)
    y, mean, rstd = kernels.forward(x, gamma, beta, groups, channels_last, activation)
    dx, dgamma, dbeta = kernels.backward(dy, x, gamma, beta, mean, rstd, groups, channels_last, activation)
    if device != "cpu":
        torch.cuda.synchronize()

    axis = -1 if channels_last else 1
    act = None if activation == "none" else activation
    x64 = x.double().cpu().numpy()
    g64, b64 = gamma.double().cpu().numpy(), beta.double().cpu().numpy()
    dy64 = dy.double().cpu().numpy()
    y_ref = reference.group_norm(x64, g64, b64, groups=groups, axis=axis, epsilon=EPSILON, activation=act)
    dx_ref, dgamma_ref, dbeta_ref = reference.group_norm_grads(
        x64, g64, b64, dy64, groups=groups, axis=axis, epsilon=EPSILON, activation=act)

    checks = {"y": error_report(y.double().cpu().numpy(), y_ref, *tol["y"])}
    # ReLU's derivative jumps at 0: positions whose float64 pre-activation is
    # within 1e-4 of it are left out of the dx comparison (they still enter
    # the group sums, where one position's share is negligible).
    mask = None
    if activation == "relu":
        z_ref = reference.group_norm(x64, g64, b64, groups=groups, axis=axis, epsilon=EPSILON)
        mask = np.abs(z_ref) > 1e-4
    for name, got, want in (("dx", dx, dx_ref), ("dgamma", dgamma, dgamma_ref), ("dbeta", dbeta, dbeta_ref)):
        rtol, atol = tol[name]
        checks[name] = error_report(got.double().cpu().numpy(), want, rtol, atol,
                                    scale=max(float(np.abs(want).max()), 1e-30), mask=mask if name == "dx" else None)

    # Statistics: mean is relative to the group's first value.
    moved = np.moveaxis(x64, axis, 1)
    grouped = moved.reshape(moved.shape[0], groups, -1)
    mean64, std64 = grouped.mean(-1), np.sqrt(grouped.var(-1) + EPSILON)
    got_mean = mean.double().cpu().numpy() + grouped[:, :, 0]
    mean_error = float(np.max(np.abs(got_mean - mean64) / std64))
    rstd_error = float(np.max(np.abs(rstd.double().cpu().numpy() * std64 - 1.0)))
    checks["mean"] = {"max_error_over_std": mean_error, "tolerance": STAT_TOLERANCE,
                      "pass": mean_error <= STAT_TOLERANCE}
    checks["rstd"] = {"max_relative_error": rstd_error, "tolerance": STAT_TOLERANCE,
                      "pass": rstd_error <= STAT_TOLERANCE}
    return {
        "shape": list(shape), "channels_last": channels_last, "groups": groups, "dtype": dtype,
        "activation": activation, "offset": offset, "unaligned": unaligned,
        "checks": checks, "pass": all(c["pass"] for c in checks.values()),
    }


def correctness_grid(quick=False):
    """Every (case, dtype, activation) of the correctness stage."""
    grid = []
    for shape, channels_last, groups in CORRECTNESS_CASES:
        for dtype in DTYPES:
            for activation in ACTIVATIONS:
                if quick and activation != "silu" and dtype != "float32":
                    continue
                grid.append(dict(shape=shape, channels_last=channels_last, groups=groups,
                                 dtype=dtype, activation=activation))
    for shape, channels_last, groups in UNALIGNED_CASES:
        for dtype in DTYPES:
            grid.append(dict(shape=shape, channels_last=channels_last, groups=groups, dtype=dtype,
                             activation="silu", unaligned=True))
    # A large common offset: the centering on the group's first value keeps
    # float32 accuracy (float16 cannot hold 1e6; bfloat16 holds it to 8192).
    for shape, channels_last, groups in (((2, 8, 8, 32), True, 8), ((2, 32, 8, 8), False, 8)):
        for activation in ("none", "silu"):
            grid.append(dict(shape=shape, channels_last=channels_last, groups=groups, dtype="float32",
                             activation=activation, offset=1e6))
    return grid


def run_correctness(kernels, device, results, save, quick=False):
    cases = results.setdefault("correctness", [])
    for spec in correctness_grid(quick):
        try:
            cases.append(check_case(kernels, device=device, **spec))
        except Exception as error:  # one failure must not hide the rest
            cases.append({**{k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()},
                          "pass": False, "error": f"{type(error).__name__}: {error}",
                          "traceback": traceback.format_exc()[-2000:]})
        save()
    failed = [c for c in cases if not c["pass"]]
    print(f"correctness: {len(cases) - len(failed)}/{len(cases)} cases pass")
    for case in failed[:20]:
        bad = {k: v for k, v in case.get("checks", {}).items() if not v["pass"]}
        print(f"  FAIL {case['shape']} cl={case['channels_last']} G={case['groups']} {case['dtype']} "
              f"{case['activation']} offset={case.get('offset', 0)}: {case.get('error') or bad}")


def run_large(kernels, results, save):
    """A float16 tensor of more than 2**31 elements: forward (both layouts)
    and backward (channels first); the first and last groups against a
    float64 reference, mean / rstd of every group, dgamma / dbeta."""
    import torch

    shape_cf = (2, 64, 272, 256, 256)  # 2 * 64 * 17825792 = 2281701376 > 2**31
    groups = 32
    out = results.setdefault("large_tensor", {"shape_channels_first": list(shape_cf), "elements": math.prod(shape_cf),
                                              "dtype": "float16", "groups": groups})
    torch.manual_seed(0)
    x = torch.randn(shape_cf, device="cuda", dtype=torch.float16)
    gamma = torch.randn(64, device="cuda")
    beta = torch.randn(64, device="cuda")
    tol = TOLERANCES["float16"]["y"]
    group_size = 64 // groups

    def check_groups(y, mean, rstd, x_cf, channels_last):
        report = {}
        for n, g in ((0, 0), (1, groups - 1)):
            channels = slice(g * group_size, (g + 1) * group_size)
            xs = x_cf[n:n + 1, channels]
            y_ref, m_ref, r_ref = torch_reference(xs, gamma[channels], beta[channels], 1, False)
            got = (y.movedim(-1, 1) if channels_last else y)[n:n + 1, channels]
            err = (got.double() - y_ref).abs()
            allowed = tol[1] + tol[0] * y_ref.abs()
            report[f"y_group_{n}_{g}"] = {"max_abs_error": float(err.max()),
                                          "max_error_over_tolerance": float((err / allowed).max()),
                                          "pass": bool((err <= allowed).all())}
        # every group's statistics against float32 PyTorch (per sample)
        worst_m, worst_r = 0.0, 0.0
        for n in range(shape_cf[0]):
            grouped = x_cf[n].reshape(groups, -1)
            var, m = torch.var_mean(grouped.float(), dim=-1, unbiased=False)
            std = torch.sqrt(var.double() + EPSILON)
            got_m = mean[n].double() + grouped[:, 0].double()
            worst_m = max(worst_m, float(((got_m - m.double()).abs() / std).max()))
            worst_r = max(worst_r, float((rstd[n].double() * std - 1).abs().max()))
        report["mean"] = {"max_error_over_std": worst_m, "pass": worst_m <= 1e-4}
        report["rstd"] = {"max_relative_error": worst_r, "pass": worst_r <= 1e-4}
        return report

    for channels_last in (False, True):
        name = "forward_channels_last" if channels_last else "forward_channels_first"
        try:
            xin = x.permute(0, 2, 3, 4, 1).contiguous() if channels_last else x
            y, mean, rstd = kernels.forward(xin, gamma, beta, groups, channels_last, "none")
            torch.cuda.synchronize()
            report = check_groups(y, mean, rstd, x, channels_last)
            out[name] = {"checks": report, "pass": all(r["pass"] for r in report.values())}
            if not channels_last:
                saved = (mean, rstd)
            del xin, y
        except Exception as error:
            out[name] = {"pass": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-2000:]}
        torch.cuda.empty_cache()
        save()

    try:
        mean, rstd = saved
        dy = torch.randn(shape_cf, device="cuda", dtype=torch.float16)
        dx, dgamma, dbeta = kernels.backward(dy, x, gamma, beta, mean, rstd, groups, False, "none")
        torch.cuda.synchronize()
        report = {}
        # dbeta, dgamma from float32 PyTorch, one sample at a time
        want_b = torch.zeros(64, dtype=torch.float64, device="cuda")
        want_g = torch.zeros(64, dtype=torch.float64, device="cuda")
        for n in range(shape_cf[0]):
            grouped = x[n].reshape(groups, -1).float()
            var, m = torch.var_mean(grouped, dim=-1, unbiased=False, keepdim=True)
            xhat = ((grouped - m) * torch.rsqrt(var + EPSILON)).reshape(64, -1)
            d = dy[n].reshape(64, -1).float()
            want_b += d.sum(-1).double()
            want_g += (d * xhat).sum(-1).double()
            del grouped, xhat, d
        for label, got, want in (("dgamma", dgamma, want_g), ("dbeta", dbeta, want_b)):
            scale = float(want.abs().max())
            err = float((got.double() - want).abs().max())
            report[label] = {"max_abs_error": err, "scale": scale, "pass": err <= 1e-4 * scale}
        # dx of the last group against the float64 reference of that group alone
        n, g = 1, groups - 1
        channels = slice(g * group_size, (g + 1) * group_size)
        xs = x[n:n + 1, channels].double().cpu().numpy()
        dys = dy[n:n + 1, channels].double().cpu().numpy()
        dx_ref, _, _ = reference.group_norm_grads(xs, gamma[channels].double().cpu().numpy(),
                                                  beta[channels].double().cpu().numpy(), dys, groups=1,
                                                  axis=1, epsilon=EPSILON)
        report["dx_last_group"] = error_report(dx[n:n + 1, channels].double().cpu().numpy(), dx_ref,
                                               *TOLERANCES["float16"]["dx"],
                                               scale=float(np.abs(dx_ref).max()))
        out["backward_channels_first"] = {"checks": report, "pass": all(r["pass"] for r in report.values())}
    except Exception as error:
        out["backward_channels_first"] = {"pass": False, "error": f"{type(error).__name__}: {error}",
                                          "traceback": traceback.format_exc()[-2000:]}
    save()
    for key, value in out.items():
        if isinstance(value, dict):
            print(f"large tensor {key}: {'pass' if value['pass'] else 'FAIL'} {value.get('error', '')}")


# ------------------------------------------------------------------ speed


def median_ms(fn, reps, warmup=3):
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run_speed(harness, results, save, reps=20):
    import torch
    import torch.nn.functional as F

    rows = results.setdefault("speed", [])
    for shape, groups in SPEED_CASES:
        for dtype in DTYPES:
            torch_dtype = getattr(torch, dtype)
            row = {"shape": list(shape), "groups": groups, "dtype": dtype, "ms": {}, "errors": {}}
            try:
                torch.manual_seed(0)
                x = torch.randn(shape, device="cuda", dtype=torch_dtype)
                dy = torch.randn_like(x)
                channels = shape[1]
                gamma, beta = torch.randn(channels, device="cuda"), torch.randn(channels, device="cuda")
                nbytes = x.numel() * x.element_size()
                row["tensor_bytes"] = nbytes
                memory_format = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
                x_cl, dy_cl = x.to(memory_format=memory_format), dy.to(memory_format=memory_format)
                copy_out = torch.empty_like(x)
                row["ms"]["copy"] = median_ms(lambda: copy_out.copy_(x), reps)

                for layout, xin, dyin in (("channels_first", x, dy), ("channels_last", x_cl, dy_cl)):
                    cl = layout == "channels_last"
                    dims = (shape[0], math.prod(shape[2:]), channels, 1) if cl else view(shape, False)
                    fwd, y, mean, rstd = harness.forward_fn(xin, gamma, beta, groups, dims, "none",
                                                            y=torch.empty_like(xin))
                    bwd, *_ = harness.backward_fn(dyin, xin, gamma, beta, mean, rstd, groups, dims, "none")

                    def both():
                        fwd()
                        bwd()

                    row["ms"][f"keras_gn_forward_{layout}"] = median_ms(fwd, reps)
                    row["ms"][f"keras_gn_forward_backward_{layout}"] = median_ms(both, reps)
                    # PyTorch's native GroupNorm on the same memory layout.
                    try:
                        w, b = gamma.to(torch_dtype), beta.to(torch_dtype)
                        row["ms"][f"torch_forward_{layout}"] = median_ms(lambda: F.group_norm(xin, groups, w, b, EPSILON), reps)
                        xg = xin.detach().requires_grad_(True)
                        wg, bg = w.detach().requires_grad_(True), b.detach().requires_grad_(True)

                        def torch_both():
                            out = F.group_norm(xg, groups, wg, bg, EPSILON)
                            torch.autograd.grad(out, (xg, wg, bg), dyin)

                        row["ms"][f"torch_forward_backward_{layout}"] = median_ms(torch_both, reps)
                    except Exception as error:
                        row["errors"][f"torch_{layout}"] = f"{type(error).__name__}: {error}"
                copy_ms = row["ms"]["copy"]
                # Effective bandwidth: the bytes a pass must move at least (forward:
                # read x, write y; backward: read x and dy, write dx), over its time.
                row["copy_GBps"] = 2 * nbytes / copy_ms / 1e6
                row["effective_GBps"], row["percent_of_copy"] = {}, {}
                for key, ms in row["ms"].items():
                    if key == "copy":
                        continue
                    moved = 5 * nbytes if "backward" in key else 2 * nbytes
                    row["effective_GBps"][key] = moved / ms / 1e6
                    row["percent_of_copy"][key] = 100.0 * (moved / 2 * copy_ms / nbytes) / ms
                del x, dy, x_cl, dy_cl, copy_out
            except Exception as error:
                row["errors"]["stage"] = f"{type(error).__name__}: {error}"
                row["traceback"] = traceback.format_exc()[-2000:]
            torch.cuda.empty_cache()
            rows.append(row)
            save()
            ms = row["ms"]
            print(f"speed {tuple(shape)} {dtype}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items())
                  + (f" errors {row['errors']}" if row["errors"] else ""))


# ------------------------------------------------- kernels' own times, tuning


PROFILE_DTYPES = ("float32", "bfloat16")


def speed_inputs(shape, dtype, layout):
    """x, dy, gamma, beta and the harness's dims for one speed row's layout."""
    import torch

    torch.manual_seed(0)
    x = torch.randn(shape, device="cuda", dtype=getattr(torch, dtype))
    dy = torch.randn_like(x)
    channels = shape[1]
    gamma, beta = torch.randn(channels, device="cuda"), torch.randn(channels, device="cuda")
    if layout == "channels_last":
        memory_format = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        x, dy = x.to(memory_format=memory_format), dy.to(memory_format=memory_format)
        return x, dy, gamma, beta, (shape[0], math.prod(shape[2:]), channels, 1)
    return x, dy, gamma, beta, view(shape, False)


def kernel_name(name):
    """'void keras_gn::cuda::(anonymous namespace)::MomentsCL<float, 4>(...)' -> 'MomentsCL<float, 4>'."""
    head = name.split("(")[0] if "(anonymous" not in name else name.split("::")[-1].split("(")[0]
    return head.replace("void ", "").strip()


def run_profile(harness, results, save, reps=10):
    """Each kernel's own time (CUPTI, via torch.profiler) in the forward and
    the backward launchers, beside the launcher's CUDA-event time: where the
    time goes, and how much of it is between kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    rows = results.setdefault("profile", [])
    for shape, groups in SPEED_CASES:
        for dtype in PROFILE_DTYPES:
            for layout in ("channels_first", "channels_last"):
                row = {"shape": list(shape), "groups": groups, "dtype": dtype, "layout": layout}
                try:
                    x, dy, gamma, beta, dims = speed_inputs(shape, dtype, layout)
                    fwd, y, mean, rstd = harness.forward_fn(x, gamma, beta, groups, dims, "none", y=torch.empty_like(x))
                    bwd, *_ = harness.backward_fn(dy, x, gamma, beta, mean, rstd, groups, dims, "none")
                    for label, fn in (("forward", fwd), ("backward", bwd)):
                        row[f"{label}_ms"] = median_ms(fn, reps)
                        with profile(activities=[ProfilerActivity.CUDA]) as prof:
                            for _ in range(reps):
                                fn()
                            torch.cuda.synchronize()
                        kernels = {}
                        for event in prof.key_averages():
                            total = getattr(event, "device_time_total", None)
                            if total is None:
                                total = getattr(event, "cuda_time_total", 0)
                            if total and event.count:
                                kernels[kernel_name(event.key)] = total / 1000.0 / reps  # ms per call
                        row[f"{label}_kernels_ms"] = kernels
                    del x, dy, y
                except Exception as error:
                    row["error"] = f"{type(error).__name__}: {error}"
                    row["traceback"] = traceback.format_exc()[-2000:]
                torch.cuda.empty_cache()
                rows.append(row)
                save()
                parts = []
                for label in ("forward", "backward"):
                    if f"{label}_ms" in row:
                        ks = row.get(f"{label}_kernels_ms", {})
                        parts.append(f"{label} {row[f'{label}_ms']:.3f} ms = "
                                     + " + ".join(f"{k} {v:.3f}" for k, v in ks.items()))
                print(f"profile {tuple(shape)} {dtype} {layout}: " + "; ".join(parts) + (f" ERROR {row['error']}" if "error" in row else ""))


def run_tuning(nvcc, arch, variants, build_dir, results, save, reps=20):
    """Each variant (comma-separated NAME=VALUE tuning macros) built side by
    side, checked on the quick correctness grid, and timed: the launchers'
    CUDA-event medians on every speed row, both layouts."""
    import torch

    builds = []
    for index, variant in enumerate(variants):
        defines = tuple(d for d in variant.split(",") if d)
        library = build_dir / f"libkeras_gn_cuda_variant{index}.so"
        builds.append((variant, library, start_build(nvcc, library, arch, defines)))
    rows = results.setdefault("tuning", [])
    for variant, library, build in builds:
        ok, seconds, log = finish_build(build)
        row = {"variant": variant, "build_ok": ok, "build_seconds": seconds, "ms": {}}
        rows.append(row)
        if not ok:
            row["build_log"] = log[-3000:]
            print(f"tune {variant}: build FAILED\n{log[-3000:]}")
            save()
            continue
        try:
            harness = Harness(library)
            checked = {}
            run_correctness(harness, "cuda", checked, lambda: None, quick=True)
            row["correctness_pass"] = f"{sum(c['pass'] for c in checked['correctness'])}/{len(checked['correctness'])}"
            for shape, groups in SPEED_CASES:
                for dtype in DTYPES:
                    for layout in ("channels_first", "channels_last"):
                        x, dy, gamma, beta, dims = speed_inputs(shape, dtype, layout)
                        fwd, y, mean, rstd = harness.forward_fn(x, gamma, beta, groups, dims, "none", y=torch.empty_like(x))
                        bwd, *_ = harness.backward_fn(dy, x, gamma, beta, mean, rstd, groups, dims, "none")

                        def both():
                            fwd()
                            bwd()

                        key = f"{'x'.join(map(str, shape))} {dtype} {layout}"
                        row["ms"][key] = {"forward": median_ms(fwd, reps), "forward_backward": median_ms(both, reps)}
                        del x, dy, y
                        torch.cuda.empty_cache()
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {error}"
            row["traceback"] = traceback.format_exc()[-2000:]
        save()
        total_f = sum(v["forward"] for v in row["ms"].values())
        total_b = sum(v["forward_backward"] for v in row["ms"].values())
        print(f"tune {variant or '(defaults)'}: correctness {row.get('correctness_pass')}, "
              f"sum of forward medians {total_f:.3f} ms, of forward+backward {total_b:.3f} ms"
              + (f" ERROR {row['error']}" if "error" in row else ""))


# ---------------------------------------------------------------- summary


def summarize(results):
    """The speed rows of a results JSON as a markdown table (no GPU needed)."""
    lines = [
        f"GPU check of the CUDA kernels: {results['versions'].get('device', '?')}, "
        f"torch {results['versions'].get('torch', '?')}, started {results.get('started', '?')}. "
        f"Correctness: {results.get('summary', {}).get('correctness_pass', '?')} cases within tolerance, "
        f"tensor over 2**31 elements: {'pass' if results.get('summary', {}).get('large_tensor_pass') else 'not passed'}.",
        "",
        "Medians of CUDA-event times (ms); `x torch`: torch.nn.functional.group_norm's time over keras_gn's "
        "on the same memory layout (above 1: keras_gn faster); `% copy`: a device-to-device copy of x "
        "over keras_gn's forward (the bandwidth floor of a pass that reads x and writes y once).",
        "",
        "| shape | dtype | layout | copy | forward | x torch | % copy | forward + backward | x torch |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results.get("speed", []):
        ms = row["ms"]
        for layout in ("channels_first", "channels_last"):
            f, fb = ms.get(f"keras_gn_forward_{layout}"), ms.get(f"keras_gn_forward_backward_{layout}")
            tf_, tfb = ms.get(f"torch_forward_{layout}"), ms.get(f"torch_forward_backward_{layout}")
            if f is None or fb is None:
                continue
            ratio = lambda theirs, ours: f"{theirs / ours:.2f}" if theirs else "-"
            lines.append(
                f"| {tuple(row['shape'])} | {row['dtype']} | {layout.replace('_', '-')} | {ms['copy']:.3f} | "
                f"{f:.3f} | {ratio(tf_, f)} | {100 * ms['copy'] / f:.0f} | {fb:.3f} | {ratio(tfb, fb)} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------- main


def versions():
    info = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
            props = torch.cuda.get_device_properties(0)
            info["multiprocessors"] = props.multi_processor_count
            info["memory_GiB"] = props.total_memory / 2**30
    except Exception as error:
        info["torch_error"] = str(error)
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def dry_run():
    """CPU: the grid, the torch reference against tests/reference.py, and the
    correctness stage with the CPU stand-in. Returns 0 when all pass."""
    import torch

    grid = correctness_grid()
    print(f"dry run: {len(grid)} correctness cases, {len(SPEED_CASES) * len(DTYPES)} speed rows")
    worst = 0.0
    for shape, channels_last, groups in CORRECTNESS_CASES[:10]:
        x, gamma, beta, _ = random_case(shape, channels_last, "float32", "cpu", 0)
        for activation in ACTIVATIONS:
            y, _, _ = torch_reference(x, gamma, beta, groups, channels_last, activation)
            want = reference.group_norm(x.double().numpy(), gamma.double().numpy(), beta.double().numpy(),
                                        groups=groups, axis=-1 if channels_last else 1, epsilon=EPSILON,
                                        activation=None if activation == "none" else activation)
            worst = max(worst, float(np.abs(y.numpy() - want).max()))
    print(f"torch float64 reference vs tests/reference.py: max difference {worst:.2e}")
    results = {}
    run_correctness(CpuStandIn(), "cpu", results, save=lambda: None)
    ok = worst < 1e-10 and all(c["pass"] for c in results["correctness"])
    print("dry run", "passed" if ok else "FAILED")
    return 0 if ok else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-out"), help="output directory")
    parser.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"))
    parser.add_argument("--arch", default="90", help="compute capability to build for (H200: 90)")
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per measurement")
    parser.add_argument("--quick", action="store_true", help="fewer correctness cases")
    parser.add_argument("--skip-large", action="store_true", help="skip the >2**31-element tensor")
    parser.add_argument("--dry-run", action="store_true", help="CPU only: see the module docstring")
    parser.add_argument("--profile", action="store_true", help="each kernel's own time (torch.profiler)")
    parser.add_argument("--summarize", metavar="JSON", help="print a results JSON's speed table as markdown and exit")
    parser.add_argument("--tune", nargs="*", default=[], metavar="NAME=VALUE,...",
                        help="also build and time these variants of the tuning macros ('' = defaults)")
    args = parser.parse_args(argv)
    if args.dry_run:
        return dry_run()
    if args.summarize:
        print(summarize(json.loads(pathlib.Path(args.summarize).read_text())), end="")
        return 0

    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "gpu_group_norm.json"
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": versions(), "errors": []}
    print("versions:", json.dumps(results["versions"]))

    def save():
        json_path.write_text(json.dumps(results, indent=1, default=str))

    save()
    started = time.time()
    build_dir = pathlib.Path(tempfile.mkdtemp(prefix="keras_gn_cuda_"))
    library = build_dir / "libkeras_gn_cuda.so"
    nvcc = shutil.which(args.nvcc) or args.nvcc
    try:
        nvcc_version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-2:]
    except OSError as error:
        nvcc_version = [str(error)]
    ok, seconds, log = build_harness(nvcc, library, args.arch)
    results["build"] = {"ok": ok, "seconds": seconds, "nvcc": nvcc, "nvcc_version": nvcc_version, "log": log[-6000:]}
    save()
    print(f"build: {'ok' if ok else 'FAILED'} in {seconds:.1f} s ({' '.join(nvcc_version)})")
    if not ok:
        print(log[-8000:])  # nvcc's own message, in the output tail
        return 1

    stages = [("correctness", lambda h: run_correctness(h, "cuda", results, save, args.quick))]
    if not args.skip_large:
        stages.append(("large_tensor", lambda h: run_large(h, results, save)))
    stages.append(("speed", lambda h: run_speed(h, results, save, args.reps)))
    if args.profile:
        stages.append(("profile", lambda h: run_profile(h, results, save)))
    if args.tune:
        stages.append(("tuning", lambda h: run_tuning(nvcc, args.arch, args.tune, build_dir, results, save, args.reps)))
    try:
        harness = Harness(library)
    except OSError as error:
        results["errors"].append(f"loading {library}: {error}")
        save()
        print(results["errors"][-1])
        return 1
    for name, stage in stages:
        stage_start = time.time()
        try:
            stage(harness)
        except Exception as error:
            results["errors"].append({"stage": name, "error": f"{type(error).__name__}: {error}",
                                      "traceback": traceback.format_exc()[-3000:]})
            print(f"stage {name} FAILED: {type(error).__name__}: {error}")
        results.setdefault("stage_seconds", {})[name] = time.time() - stage_start
        save()

    correctness = results.get("correctness", [])
    large = results.get("large_tensor", {})
    results["summary"] = {
        "correctness_pass": f"{sum(c['pass'] for c in correctness)}/{len(correctness)}",
        "large_tensor_pass": all(v["pass"] for v in large.values() if isinstance(v, dict)) if large else None,
        "stage_errors": len(results["errors"]),
        "seconds": time.time() - started,
    }
    save()
    print("summary:", json.dumps(results["summary"]))
    for row in results.get("speed", []):
        pct = row.get("percent_of_copy", {})
        if pct:
            print(f"  {tuple(row['shape'])} {row['dtype']}: copy {row['copy_GBps']:.0f} GB/s; "
                  + ", ".join(f"{k} {v:.0f}%" for k, v in pct.items()))
    print(f"wrote {json_path}")
    passed = all(c["pass"] for c in correctness) and results["summary"]["large_tensor_pass"] is not False
    return 0 if passed and not results["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
