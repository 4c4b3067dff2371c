"""AudioNet in Keras 3 / TensorFlow: a small 1-D conv student distilled from an ImageNet teacher."""
from audionet_tf.core.errors import AudioNetError
from audionet_tf.core.version import __version__

__all__ = ["AudioNetError", "__version__"]
