"""`python -m train`: see `train.app`."""

from train.app import run

run()
