"""AudioNet in Keras 3 / TensorFlow: a small 1-D conv student distilled from an ImageNet teacher."""

__version__ = "0.1.0"

from audionet_tf.errors import AudioNetError  # noqa: E402

__all__ = ["AudioNetError", "__version__"]
