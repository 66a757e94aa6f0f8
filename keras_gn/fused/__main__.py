"""`python -m keras_gn.fused build [--force]`: prebuild the fused op."""

import argparse
import sys

from keras_gn.fused import builder


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_gn.fused")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    try:
        path = builder.build(force=args.force)
    except builder.BuildError as error:
        print(f"keras_gn: could not build the fused op: {error}", file=sys.stderr)
        return 1
    import tensorflow as tf

    tf.load_op_library(str(path))
    print(f"keras_gn: fused op built and loaded: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
