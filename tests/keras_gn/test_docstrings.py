"""The Example sections of the public docstrings run and print what they say."""

import doctest

import pytest

from keras_gn.layers import channel_affine
from keras_gn.layers import group_normalization
from keras_gn.layers import weight_standardized_conv


@pytest.mark.parametrize("module", [group_normalization, channel_affine, weight_standardized_conv])
def test_docstring_examples(module):
    results = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert results.attempted > 0
    assert results.failed == 0
