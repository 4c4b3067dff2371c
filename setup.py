"""Installs audionet_tf: an audio student distilled from an ImageNet teacher."""
from setuptools import find_packages, setup

ENTRY_POINTS = {
    "audionet-train": "audionet_tf.commands.train:main",
    "audionet-prepare": "audionet_tf.commands.prepare:main",
    "audionet-export": "audionet_tf.commands.export:main",
    "audionet-predict": "audionet_tf.commands.predict:main",
    "audionet-embed": "audionet_tf.commands.embed:main",
    "audionet-evaluate": "audionet_tf.commands.evaluate:main",
    "audionet-report": "audionet_tf.commands.report:main",
}

setup(
    name="audionet_tf",
    version="0.1.0",
    description="AudioNet: a small 1-D conv student that learns to hear what an ImageNet teacher sees.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["audionet_tf", "audionet_tf.*"]),
    package_data={"audionet_tf": ["resources/*"]},
    install_requires=[
        "tensorflow==2.21.*",
        "keras>=3.10",
        "tensorboard>=2.20",
        "numpy",
        "tomli>=2; python_version<'3.11'",
        "yt-dlp[default]",
        "deno",
        "ffmpeg-python>=0.2",
        "imageio-ffmpeg>=0.5",
        "scikit-learn>=1.3",
        "scipy>=1.6",  # resample_poly: arrays handed to predict/embed at another sample rate (scikit-learn pulls it too)
        "matplotlib>=3.7",
        "google-crc32c>=1.5",  # TFRecord framing for shards written through any file system
    ],
    extras_require={
        # The emulator and Beam's GCS client let the tests write a dataset to a GCS server on 127.0.0.1;
        # tensorflow-hub (which pulls tf-keras) lets them load an export with hub.KerasLayer's defaults.
        "test": ["pytest>=7", "ai-edge-litert", "gcp-storage-emulator>=2024.8", "apache-beam[gcp]>=2.60",
                 "tensorflow-hub>=0.16"],
        "litert": ["ai-edge-litert"],
        "beam": ["apache-beam[tfrecord]>=2.60"],
        "gcp": ["apache-beam[gcp,tfrecord]>=2.60"],  # gs:// outputs and the DataflowRunner
    },
    entry_points={"console_scripts": [f"{name}={target}" for name, target in ENTRY_POINTS.items()]},
)
