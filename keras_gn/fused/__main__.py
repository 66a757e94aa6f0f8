"""`python -m keras_gn.fused build [--force] [--cuda] [--nvcc PATH] [--archs 80,90]`:
prebuild the fused op (with `--cuda`, with its CUDA kernels).

`python -m keras_gn.fused verify [--quick]`: check the op against float64 on
the first visible GPU (else the CPU); where a GPU passes, record it so that
`implementation="auto"` uses the op there (`keras_gn/fused/verify.py`)."""

import argparse
import sys

from keras_gn.fused import builder


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_gn.fused")
    parser.add_argument("command", choices=["build", "verify"])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--cuda", action="store_true",
                        help="also compile the CUDA kernels (needs nvcc, no GPU)")
    parser.add_argument("--nvcc", help="with --cuda: the nvcc to use (default: found)")
    parser.add_argument("--archs", help="with --cuda: compute capabilities, e.g. 80,90")
    parser.add_argument("--quick", action="store_true", help="verify: a few cases only")
    args = parser.parse_args(argv)
    if args.command == "verify":
        return _verify(args.quick)
    archs = tuple(a for a in (args.archs or "").replace(";", ",").split(",") if a) or None
    try:
        path = builder.build(force=args.force, cuda=args.cuda, nvcc=args.nvcc, archs=archs)
    except builder.BuildError as error:
        print(f"keras_gn: could not build the fused op: {error}", file=sys.stderr)
        return 1
    import tensorflow as tf

    tf.load_op_library(str(path))
    print(f"keras_gn: fused op built and loaded: {path}")
    return 0


def _verify(quick):
    from keras_gn import fused
    from keras_gn.fused import verify

    module = fused.load()
    if module is None:
        print(f"keras_gn: the fused op is unavailable: {fused.unavailable_reason()}", file=sys.stderr)
        return 1
    names = verify.gpu_names()
    device = "/GPU:0" if names else "/CPU:0"
    report = verify.run(module, device, quick=quick)
    print(f"keras_gn: {report['cases'] - len(report['failures'])}/{report['cases']} cases within "
          f"tolerance on {names[0] if names else 'the CPU'} ({device}).")
    for failure in report["failures"][:10]:
        print("  FAILED", {k: failure.get(k) for k in ("shape", "axis", "groups", "dtype", "activation",
                                                        "max_error_y", "max_error_dx", "error")})
    if not names:
        print("keras_gn: no GPU visible: the CPU kernels were checked; nothing recorded.")
        return 0 if report["passed"] else 1
    if not all("GPU" in d for d in report["devices"]):
        print(f"keras_gn: the op did not run on the GPU ({', '.join(report['devices'])}); not recorded.")
        return 1
    if report["passed"] and fused.has_gpu_kernels():
        verify.write_record(fused.loaded_library(), names, report)
        print(f"keras_gn: recorded {verify.record_path(fused.loaded_library())}; "
              f'implementation="auto" now uses the fused op on {", ".join(sorted(set(names)))}.')
        return 0
    print('keras_gn: not recorded; implementation="auto" keeps the composite recipe on the GPU.')
    return 1


if __name__ == "__main__":
    sys.exit(main())
