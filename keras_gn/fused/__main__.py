"""`python -m keras_gn.fused build [--force] [--cuda] [--nvcc PATH] [--archs 80,90]`:
prebuild the fused op (with `--cuda`, with its CUDA kernels)."""

import argparse
import sys

from keras_gn.fused import builder


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_gn.fused")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--cuda", action="store_true",
                        help="also compile the CUDA kernels (needs nvcc, no GPU)")
    parser.add_argument("--nvcc", help="with --cuda: the nvcc to use (default: found)")
    parser.add_argument("--archs", help="with --cuda: compute capabilities, e.g. 80,90")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
