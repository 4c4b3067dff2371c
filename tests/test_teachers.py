"""The registry teachers that need `preprocess_input` (ResNet50, VGG16) apply it: checked against an
independent NumPy version of ImageNet's "caffe" preprocessing, and through one forward pass of ResNet50
(weights=None, no download)."""
import numpy as np
import pytest

from audionet_tf.preparation import teacher as teachers

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def caffe(frames: np.ndarray) -> np.ndarray:
    """RGB [0, 255] → BGR minus the ImageNet mean per channel (what ResNet50 and VGG16 were trained on)."""
    return frames.astype(np.float32)[..., ::-1] - CAFFE_MEAN_BGR


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["ResNet50", "VGG16"])
def test_registry_preprocessing_is_caffe_style(name, frames):
    build, preprocess = teachers._registry()[name]
    assert preprocess is not None, f"{name} is registered without preprocessing"
    x = frames.astype(np.float32)
    np.testing.assert_allclose(preprocess(x.copy()), caffe(frames), atol=1e-4)
    # The teachers that preprocess inside the model are registered without it.
    assert teachers._registry()["EfficientNetV2B0"][1] is None


@pytest.mark.slow
def test_resnet50_teacher_applies_its_preprocessing(frames):
    import keras

    keras.utils.set_random_seed(7)
    teacher = teachers.load_teacher("ResNet50", weights=None, batch_size=2)
    keras.utils.set_random_seed(7)  # the same random weights, built independently here
    reference = keras.applications.ResNet50(weights=None, classifier_activation=None)
    before = frames.copy()
    logits = teacher.logits(frames)
    np.testing.assert_array_equal(frames, before)  # the caller's frames are not preprocessed in place
    expected = reference(caffe(frames), training=False).numpy()
    scale = max(1.0, float(np.abs(expected).max()))
    assert logits.shape == (3, 1000)
    assert float(np.abs(logits - expected).max()) / scale <= 1e-4
    raw = reference(frames.astype(np.float32), training=False).numpy()  # the bug this guards against
    assert float(np.abs(logits - raw).max()) / scale > 1e-2


def test_input_size_read_from_a_keras_file_is_the_loaded_models(tmp_path):
    """Decoding starts at the size `input_size_of` reads from a `.keras` file while the teacher loads: it is
    the loaded model's for a functional model, a Sequential with an Input and one built with a shape; a model
    that takes any size gives None (decoding then waits for the load). The demo teacher's is its own."""
    import keras

    inputs = keras.Input((16, 20, 3))
    functional = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(inputs)))
    with_input = keras.Sequential([keras.Input((12, 14, 3)), keras.layers.GlobalAveragePooling2D(),
                                   keras.layers.Dense(5)])
    built = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
    built.build((None, 10, 18, 3))
    for name, model in (("functional", functional), ("with_input", with_input), ("built", built)):
        path = str(tmp_path / f"{name}.keras")
        model.save(path)
        assert teachers.input_size_of(path) == teachers.load_teacher(path).input_size, name
    assert teachers.input_size_of(str(tmp_path / "functional.keras")) == (16, 20)
    inputs = keras.Input((None, None, 3))
    any_size = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(inputs)))
    any_size.save(str(tmp_path / "any.keras"))
    assert teachers.input_size_of(str(tmp_path / "any.keras")) is None
    (tmp_path / "broken.keras").write_bytes(b"not a model")
    assert teachers.input_size_of(str(tmp_path / "broken.keras")) is None
    assert teachers.input_size_of(teachers.DEMO_TEACHER) == teachers.demo_teacher().input_size
