"""SGD with momentum and L2 weight decay the way the papers trained.

He et al. (2016) and Wu & He (2018) trained with Caffe-style SGD (Caffe2's
in the GN paper), whose weight decay is an L2 term added to the gradient
*before* the momentum:

    v <- momentum * v + lr * (g + weight_decay * w);   w <- w - v

(`torch.optim.SGD(weight_decay=...)` is the same). Keras' own
`keras.optimizers.SGD(weight_decay=...)` is decoupled instead
(`w <- w - lr * weight_decay * w` each step, outside the momentum), which
with momentum 0.9 decays about 10 times less at the same value: 1e-4 there
is not the papers' 1e-4. With Group or Batch Normalization the weights'
scale does not change the output, so weight decay sets the effective
learning rate, and the weaker decay costs accuracy (a GN ResNet-20 on
CIFAR-10, after the first learning-rate drop: 84.8% test accuracy with
Keras' decay, 85.7% with this one).
"""

import keras
from keras import ops

from keras_gn.serialization import register

NORM_VARIABLE_NAMES = ("gamma", "beta")


@register
class SGD(keras.optimizers.SGD):
    """SGD with momentum and coupled L2 weight decay (Caffe/PyTorch style).

    The same arguments as `keras.optimizers.SGD`; only `weight_decay`
    means something else: it is added to each gradient, times the
    variable, before the momentum. Variables excluded with
    `exclude_from_weight_decay(...)` get none. The decay is added after
    the gradients are summed over replicas, so it does not grow with the
    number of replicas under `tf.distribute`.

    Args:
        learning_rate: float or `keras.optimizers.schedules`. Defaults to
            0.01.
        momentum: float >= 0. Defaults to 0.0.
        nesterov: whether to use Nesterov momentum. Defaults to False.
        weight_decay: L2 coefficient, or None for none. Defaults to None.
        **kwargs: the other `keras.optimizers.Optimizer` arguments.

    Example:

    >>> sgd = zoo.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-4)
    >>> sgd.exclude_from_weight_decay(var_names=["gamma", "beta"])
    """

    def _apply_weight_decay(self, variables):
        """Keras' decoupled decay, replaced by the L2 term in `update_step`."""

    def update_step(self, gradient, variable, learning_rate):
        if self.weight_decay and self._use_weight_decay(variable):
            gradient = ops.add(ops.cast(gradient, variable.dtype),
                               ops.multiply(ops.cast(self.weight_decay, variable.dtype), variable))
        super().update_step(gradient, variable, learning_rate)


def sgd(learning_rate, weight_decay=1e-4, momentum=0.9, decay_norm_parameters=False):
    """`SGD` with L2 weight decay, on gamma/beta only if asked."""
    optimizer = SGD(learning_rate, momentum=momentum, weight_decay=weight_decay or None)
    if weight_decay and not decay_norm_parameters:
        optimizer.exclude_from_weight_decay(var_names=list(NORM_VARIABLE_NAMES))
    return optimizer
