"""Command line: `keras-gn convert` (also `python -m keras_gn convert`).

Converts a saved `.keras` model, or a `keras.applications` architecture, from
BatchNormalization to Group Normalization and prints the report:

    keras-gn convert --application ResNet50 --output resnet50_gn.keras
    keras-gn convert --input my_model.keras --groups 16 --output my_model_gn.keras
"""

import argparse
import sys

from keras_gn.convert import INIT_MODES


def _parser():
    parser = argparse.ArgumentParser(prog="keras-gn", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert", help="rewrite BatchNormalization into GroupNormalization"
    )
    source = convert.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="a saved .keras model to convert")
    source.add_argument(
        "--application",
        help="a keras.applications model name, built with weights=None "
        "(e.g. ResNet50, EfficientNetB0)",
    )
    convert.add_argument(
        "--input_shape",
        default=None,
        help="input shape for --application, e.g. 224,224,3 (default: the model's)",
    )
    grouping = convert.add_mutually_exclusive_group()
    grouping.add_argument("--groups", type=int, default=None, help="groups per layer (default 32)")
    grouping.add_argument("--group_size", type=int, default=None, help="channels per group, instead of --groups")
    convert.add_argument("--min_group_size", type=int, default=2)
    convert.add_argument("--init", choices=INIT_MODES, default="copy")
    convert.add_argument("--output", help="where to save the converted .keras model")
    return parser


def _load(args):
    import keras

    if args.input:
        return keras.saving.load_model(args.input)
    builder = getattr(keras.applications, args.application, None)
    if not callable(builder):
        raise SystemExit(
            f"keras-gn: --application={args.application} is not a "
            "keras.applications model (e.g. ResNet50, MobileNetV2, EfficientNetB0)."
        )
    kwargs = {"weights": None}
    if args.input_shape:
        kwargs["input_shape"] = tuple(int(d) for d in args.input_shape.split(","))
    return builder(**kwargs)


def main(argv=None):
    args = _parser().parse_args(argv)
    import keras_gn
    from keras_gn import ops

    model = _load(args)
    converted, report = keras_gn.convert_bn_to_gn(
        model,
        groups=ops.DEFAULT_GROUPS if args.groups is None else args.groups,
        group_size=args.group_size,
        min_group_size=args.min_group_size,
        init=args.init,
        return_report=True,
    )
    print(report)
    if args.output:
        converted.save(args.output)
        print(f"Saved {converted.name} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
