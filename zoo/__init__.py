"""zoo: Group Normalization model builders and pretrained weights.

Empty for now: the GN ResNet / VGG builders, the weights registry and the
converters of the authors' released weights come with the model-zoo work.
"""
