"""`python -m keras_gn convert ...`: see `keras_gn.cli`."""

import sys

from keras_gn.cli import main

sys.exit(main())
