"""`python -m zoo.convert`: convert public GN ImageNet weights to Keras.

    python -m zoo.convert --source detectron --input R-50-GN.pkl \\
        --arch resnet50_gn --output resnet50_gn.weights.h5
    python -m zoo.convert --source bit --input BiT-M-R50x1.npz \\
        --arch resnetv2_50x1_bit --output bit_m_r50x1.weights.h5

Load the result with `zoo.resnet50_gn(weights="resnet50_gn.weights.h5")`
(BiT-M: `zoo.resnetv2_50x1_bit(weights=..., classes=21843)`).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # see keras_gn.command_line

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from keras_gn import command_line  # noqa: E402
from zoo import convert  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("source", None, list(convert.SOURCES), "Format of the input file.")
flags.DEFINE_string("input", None, "The downloaded weights file.")
flags.DEFINE_string("arch", "resnet50_gn", "Zoo architecture, e.g. resnet50_gn, resnet101_gn or resnetv2_50x1_bit.")
flags.DEFINE_string("output", None, "Where to write the .weights.h5 file.")
flags.mark_flags_as_required(["source", "input", "output"])


def main(argv):
    del argv
    if not FLAGS.output.endswith(".weights.h5"):
        raise app.UsageError(f"--output={FLAGS.output} must end in .weights.h5")
    try:
        convert.convert_file(FLAGS.source, FLAGS.input, FLAGS.arch, FLAGS.output)
    except ValueError as error:  # a bad input file or --arch: one line, no traceback
        raise SystemExit(f"Error: {error}") from None
    print(f"Converted {FLAGS.source} {FLAGS.input} into {FLAGS.output} ({FLAGS.arch}).")


if __name__ == "__main__":
    command_line.run(main, __doc__, __name__)
