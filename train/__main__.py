"""`python -m train`: see `train.app`."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # see keras_gn.command_line

from train.app import run  # noqa: E402

run()
