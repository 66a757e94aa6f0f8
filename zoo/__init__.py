"""zoo: Group Normalization models for Keras, and their pretrained weights.

Builders (keras.applications signatures, `norm="gn" | "bn"`):
    resnet18_gn, resnet34_gn, resnet50_gn, resnet101_gn, resnet152_gn,
    vgg16_gn; CIFAR (32x32): resnet20_gn, resnet32_gn, resnet56_gn,
    resnet110_gn, vgg16_cifar_gn. Pre-activation ResNets (224x224 by
    default, any size): BiT (GN+WS) resnetv2_50x1_bit, resnetv2_50x3_bit,
    resnetv2_101x1_bit, resnetv2_101x3_bit, resnetv2_152x2_bit,
    resnetv2_152x4_bit; timm's resnetv2_50d_gn.
Weights: list_models(), list_weights(arch=None), get_weights_info(tag),
    preprocess_input(x, weights).
Converters of the authors' weights: `zoo.convert` (`python -m zoo.convert`).
"""

from zoo import finetune
from zoo import optimizers
from zoo.preprocessing import Preprocessing
from zoo.preprocessing import preprocess_input
from zoo.resnet import ResNet
from zoo.resnet import resnet18_gn
from zoo.resnet import resnet20_gn
from zoo.resnet import resnet32_gn
from zoo.resnet import resnet34_gn
from zoo.resnet import resnet50_gn
from zoo.resnet import resnet56_gn
from zoo.resnet import resnet101_gn
from zoo.resnet import resnet110_gn
from zoo.resnet import resnet152_gn
from zoo.resnetv2 import ResNetV2
from zoo.resnetv2 import resnetv2_50d_gn
from zoo.resnetv2 import resnetv2_50x1_bit
from zoo.resnetv2 import resnetv2_50x3_bit
from zoo.resnetv2 import resnetv2_101x1_bit
from zoo.resnetv2 import resnetv2_101x3_bit
from zoo.resnetv2 import resnetv2_152x2_bit
from zoo.resnetv2 import resnetv2_152x4_bit
from zoo.vgg import VGG
from zoo.vgg import vgg16_cifar_gn
from zoo.vgg import vgg16_gn
from zoo.weights import get_entry as get_weights_info
from zoo.weights import list_weights

_MODELS = {
    builder.__name__: builder
    for builder in (resnet18_gn, resnet34_gn, resnet50_gn, resnet101_gn, resnet152_gn, vgg16_gn,
                    resnet20_gn, resnet32_gn, resnet56_gn, resnet110_gn, vgg16_cifar_gn,
                    resnetv2_50x1_bit, resnetv2_50x3_bit, resnetv2_101x1_bit, resnetv2_101x3_bit,
                    resnetv2_152x2_bit, resnetv2_152x4_bit, resnetv2_50d_gn)
}


def list_models():
    """Names of every zoo builder, sorted."""
    return sorted(_MODELS)


def default_image_size(name):
    """Input size a builder defaults to (32 for CIFAR models, else 224; the
    BiT models too, the size BiT pre-trained at), known without building
    the model."""
    from zoo.resnet import ARCHS

    get_model(name)
    if name == "vgg16_cifar_gn" or ARCHS.get(name, {}).get("stem") == "cifar":
        return 32
    return 224


def get_model(name):
    """The builder called `name` (see `list_models()`)."""
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}. Zoo models: {list_models()}.") from None


__all__ = ["Preprocessing", "default_image_size", "ResNet", "ResNetV2", "VGG", "finetune", "get_model", "get_weights_info", "list_models", "list_weights",
           "preprocess_input", *_MODELS]
