"""Registration of keras_gn objects with Keras serialization.

Every saveable class is registered under the package name "keras_gn", so a
saved model refers to it as "keras_gn>ClassName". That name is part of every
`.keras` file written with this package: never change it.
"""

import keras

PACKAGE = "keras_gn"

register = keras.saving.register_keras_serializable(package=PACKAGE)
