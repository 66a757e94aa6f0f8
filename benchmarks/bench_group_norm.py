"""Group Normalization speed, every implementation side by side in one run.

    python benchmarks/bench_group_norm.py            # full run, writes results
    python benchmarks/bench_group_norm.py --quick    # one small shape, no files

Times the forward pass and forward + backward (with a given upstream
gradient, the gradients with respect to the input and to gamma/beta) of:

- keras_gn fused: `keras_gn.GroupNormalization(implementation="fused")`
- keras_gn composite: `implementation="composite"` (plain TensorFlow ops)
- keras GN: `keras.layers.GroupNormalization` (epsilon matched), and the
  same under `jit_compile=True` (XLA)
- keras BN: `keras.layers.BatchNormalization` in training mode
- torch GN: `torch.nn.GroupNorm` with as many threads as TensorFlow uses,
  when torch is installed (`pip install torch`)
- the copy unit: TensorFlow's `x * 2`, one read and one write of the tensor
  (with TensorFlow's per-call costs: output allocation, dispatch)
- the memory floor: torch's `x * 2` into a preallocated tensor, the same
  bytes read and written with nothing else (same threads)

for ResNet-50 shapes and a video shape, channels-last and channels-first,
in float32 and bfloat16 (`mixed_bfloat16` for the Keras layers: bfloat16
data, float32 variables; torch's modules in bfloat16).
TensorFlow code runs in `tf.function`s, as in training. Each figure is the
median of `--repeats` runs after a warm-up. GB/s counts the bytes a perfect
implementation must move: forward reads x and writes y (2 tensors), forward +
backward also reads x and dy and writes dx (5 tensors).

Writes `benchmarks/results/group_norm.json` and `group_norm.md`.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_gn  # noqa: E402
from keras_gn import fused  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SHAPES = [
    (32, 56, 56, 256),
    (32, 28, 28, 512),
    (32, 14, 14, 1024),
    (32, 7, 7, 2048),
    (8, 112, 112, 64),
    (4, 8, 56, 56, 256),
]
GROUPS = 32
EPSILON = 1e-5
DTYPES = ("float32", "bfloat16")


def median_ms(fn, repeats):
    """Median wall time of `fn()` in ms. TensorFlow (eager and tf.function)
    and torch both run synchronously on the CPU, so the result is ready when
    `fn` returns; nothing is copied out (`.numpy()` of a 100 MB tensor would
    add ~12 ms here, drowning the differences being measured)."""
    fn()  # warm-up (tracing, allocation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def channels_first(shape):
    return (shape[0], shape[-1]) + tuple(shape[1:-1])


def keras_layer_timers(layer, x, dy, jit_compile=False):
    layer.build(x.shape)

    @tf.function(jit_compile=jit_compile)
    def forward(x):
        return layer(x, training=True)

    @tf.function(jit_compile=jit_compile)
    def forward_backward(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        return tape.gradient(y, [x] + layer.trainable_weights, output_gradients=dy)

    return (lambda: forward(x)), (lambda: forward_backward(x, dy))


def copy_timer(x):
    double = tf.function(lambda x: x * 2)
    return lambda: double(x)


def to_torch(x, dtype):
    """The TensorFlow tensor's values in torch, same memory layout."""
    return torch.from_numpy(tf.cast(x, tf.float32).numpy()).to(getattr(torch, dtype))


def floor_timer(x, dtype):
    tx = to_torch(x, dtype)
    out = torch.empty_like(tx)
    return lambda: torch.mul(tx, 2, out=out)


def torch_timers(x, dy, axis, dtype="float32"):
    channels = x.shape[axis]
    tx, tdy = to_torch(x, dtype), to_torch(dy, dtype)
    if axis != 1:  # channels-last memory layout, viewed as NC... for torch
        perm = (0, tx.dim() - 1) + tuple(range(1, tx.dim() - 1))
        tx, tdy = tx.permute(perm), tdy.permute(perm)
    norm = torch.nn.GroupNorm(GROUPS, channels, eps=EPSILON).to(getattr(torch, dtype))
    tx.requires_grad_(True)

    def forward():
        with torch.no_grad():
            return norm(tx)

    def forward_backward():
        tx.grad = None
        norm.zero_grad()
        y = norm(tx)
        y.backward(tdy)
        return tx.grad

    return forward, forward_backward


def implementations(shape, axis, dtype="float32"):
    """Yields (name, forward_timer, forward_backward_timer or None)."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=shape), dtype)
    dy = tf.constant(rng.normal(size=shape), dtype)
    policy = {"dtype": "mixed_bfloat16"} if dtype == "bfloat16" else {}
    for name, impl in (("keras_gn fused", "fused"), ("keras_gn composite", "composite")):
        layer = keras_gn.GroupNormalization(GROUPS, axis=axis, epsilon=EPSILON, implementation=impl, **policy)
        yield (name, *keras_layer_timers(layer, x, dy))
    yield ("keras GN", *keras_layer_timers(
        keras.layers.GroupNormalization(GROUPS, axis=axis, epsilon=EPSILON, **policy), x, dy))
    yield ("keras GN, XLA", *keras_layer_timers(
        keras.layers.GroupNormalization(GROUPS, axis=axis, epsilon=EPSILON, **policy), x, dy, jit_compile=True))
    yield ("keras BN (training)", *keras_layer_timers(keras.layers.BatchNormalization(axis=axis, **policy), x, dy))
    if torch is not None:
        yield ("torch GN", *torch_timers(x, dy, axis, dtype))
    yield ("copy unit (x * 2)", copy_timer(x), None)
    if torch is not None:
        yield ("memory floor (torch x * 2, preallocated)", floor_timer(x, dtype), None)


def run(shapes, layouts, repeats, dtypes=DTYPES):
    rows = []
    cases = [(shape, dtype, layout) for shape in shapes for dtype in dtypes for layout in layouts]
    for base_shape, dtype, layout in cases:
        shape = base_shape if layout == "channels_last" else channels_first(base_shape)
        axis = -1 if layout == "channels_last" else 1
        nbytes = tf.as_dtype(dtype).size * int(np.prod(shape))
        timings = {}
        for name, forward, forward_backward in implementations(shape, axis, dtype):
            fwd = median_ms(forward, repeats)
            both = median_ms(forward_backward, repeats) if forward_backward else None
            timings[name] = (fwd, both)
            print(f"{str(shape):>22} {dtype:>8} {layout:>14}  {name:<20} fwd {fwd:8.2f} ms"
                  + (f"  fwd+bwd {both:8.2f} ms" if both else ""), flush=True)
        for name, (fwd, both) in timings.items():
            row = dict(shape=list(shape), dtype=dtype, layout=layout, implementation=name,
                       forward_ms=fwd, forward_backward_ms=both,
                       forward_gbps=2 * nbytes / fwd / 1e6,
                       forward_backward_gbps=5 * nbytes / both / 1e6 if both else None)
            for ref in ("keras GN", "torch GN"):
                if ref in timings:
                    ref_fwd, ref_both = timings[ref]
                    key = ref.split()[0]
                    row[f"forward_speedup_vs_{key}"] = ref_fwd / fwd
                    row[f"forward_backward_speedup_vs_{key}"] = ref_both / both if both else None
            rows.append(row)
    return rows


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), tensorflow=tf.__version__, keras=keras.__version__,
                torch=torch.__version__ if torch else None,
                tf_threads=tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count())


def markdown(rows, info, repeats):
    def fmt(value, spec="{:.1f}"):
        return "" if value is None else spec.format(value)

    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores; TensorFlow {info['tensorflow']}, "
        f"Keras {info['keras']}" + (f", torch {info['torch']}" if info["torch"] else "") + ". "
        f"groups={GROUPS}; medians of {repeats} runs; speed-ups are the keras GN (or torch GN) time "
        "divided by this row's time. `fwd / floor`: forward time over the memory floor's (torch's "
        "`x * 2` into a preallocated tensor: the bytes a forward must move, nothing else); "
        "`fwd / copy unit`: over TensorFlow's own `x * 2`.",
        "",
        "| shape | dtype | layout | implementation | fwd ms | fwd / floor | fwd / copy unit | fwd+bwd ms | "
        "fwd+bwd GB/s | fwd vs keras GN | fwd+bwd vs keras GN | fwd vs torch GN | fwd+bwd vs torch GN |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def reference(r, prefix):
        key = (tuple(r["shape"]), r.get("dtype", "float32"), r["layout"])
        found = [q["forward_ms"] for q in rows if q["implementation"].startswith(prefix)
                 and (tuple(q["shape"]), q.get("dtype", "float32"), q["layout"]) == key]
        return found[0] if found else None

    for r in rows:
        floor, copy = reference(r, "memory floor"), reference(r, "copy unit")
        lines.append(
            f"| {tuple(r['shape'])} | {r.get('dtype', 'float32')} | {r['layout']} | {r['implementation']} | "
            f"{fmt(r['forward_ms'])} | {fmt(floor and r['forward_ms'] / floor, '{:.2f}')} | "
            f"{fmt(copy and r['forward_ms'] / copy, '{:.2f}')} | "
            f"{fmt(r['forward_backward_ms'])} | {fmt(r['forward_backward_gbps'])} | "
            f"{fmt(r.get('forward_speedup_vs_keras'), '{:.2f}x')} | "
            f"{fmt(r.get('forward_backward_speedup_vs_keras'), '{:.2f}x')} | "
            f"{fmt(r.get('forward_speedup_vs_torch'), '{:.2f}x')} | "
            f"{fmt(r.get('forward_backward_speedup_vs_torch'), '{:.2f}x')} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="one small shape; write nothing")
    parser.add_argument("--num_shapes", type=int, default=len(SHAPES), help="time the first N shapes")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated, of " + ", ".join(DTYPES))
    parser.add_argument("--markdown_only", action="store_true",
                        help="rewrite group_norm.md from group_norm.json without timing")
    args = parser.parse_args()
    if args.markdown_only:
        saved = json.loads((RESULTS / "group_norm.json").read_text())
        (RESULTS / "group_norm.md").write_text(markdown(saved["rows"], saved["machine"], saved["repeats"]))
        return
    if fused.load() is None:
        raise SystemExit(f"the fused op is unavailable: {fused.unavailable_reason()}")
    if torch is not None:
        torch.set_num_threads(machine()["tf_threads"])
    shapes = [(4, 14, 14, 256)] if args.quick else SHAPES[: args.num_shapes]
    dtypes = tuple(d for d in args.dtypes.split(",") if d)
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        parser.error(f"--dtypes: {', '.join(unknown)} not among {', '.join(DTYPES)}")
    rows = run(shapes, ["channels_last", "channels_first"], 3 if args.quick else args.repeats, dtypes)
    if args.quick or args.num_shapes < len(SHAPES) or dtypes != DTYPES:
        return
    info = machine()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "group_norm.json").write_text(json.dumps(dict(machine=info, repeats=args.repeats, rows=rows), indent=1))
    (RESULTS / "group_norm.md").write_text(markdown(rows, info, args.repeats))
    print(f"wrote {RESULTS / 'group_norm.json'} and {RESULTS / 'group_norm.md'}")


if __name__ == "__main__":
    main()
