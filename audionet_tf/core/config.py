"""Settings: frozen dataclasses with the slides' defaults, filled from a pipeline TOML file, then flags.

Every setting the project has lives here. A pipeline file has one table per section
(`[audio]`, `[model]`, `[train]`, `[prepare]`, `[export]`, `[finetune]`); a command-line flag overrides the file's value.
Values are validated once, when a section is built, so a bad value is refused before
anything is written.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from audionet_tf.core.errors import ConfigError

DEFAULT_TEACHER = "EfficientNetV2B0"
ARCHITECTURES = ("audionet", "soundnet5", "soundnet8")  # model.architecture (the tables: model/)


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {message}")


@dataclass(frozen=True)
class AudioConfig:
    """How audio and frames are sampled and paired (slides: 16 kHz audio, a frame every 40 ms)."""

    sample_rate: int = 16000
    frame_period_ms: float = 40.0
    # Window of audio paired with each frame; by default one frame period (640 samples).
    window_ms: float = 40.0

    def __post_init__(self) -> None:
        _check(self.sample_rate > 0, "audio.sample_rate", f"must be positive, got {self.sample_rate}")
        _check(self.frame_period_ms > 0, "audio.frame_period_ms", f"must be positive, got {self.frame_period_ms}")
        _check(self.window_ms > 0, "audio.window_ms", f"must be positive, got {self.window_ms}")
        _check(self.window_samples >= 8, "audio.window_ms", f"{self.window_ms} ms is under 8 samples")

    @property
    def window_samples(self) -> int:
        """Samples in one window (640 at 16 kHz and 40 ms)."""
        return int(round(self.sample_rate * self.window_ms / 1000.0))

    @property
    def hop_samples(self) -> int:
        """Samples between two frames (640 at 16 kHz and 40 ms)."""
        return int(round(self.sample_rate * self.frame_period_ms / 1000.0))

    @property
    def frames_per_second(self) -> float:
        """Frames sampled per second of video (25 at 40 ms)."""
        return 1000.0 / self.frame_period_ms


@dataclass(frozen=True)
class ModelConfig:
    """The student: the slides' layer table (default) or SoundNet's; the input scale and SoundNet's window are free."""

    # audionet: the slides' table on each frame's own window | soundnet5 | soundnet8: SoundNet's
    # tables (model/soundnet.py), on a long window centred on each frame (docs/training.md, "SoundNet").
    architecture: str = "audionet"
    # SoundNet's window in seconds, centred on each teacher frame; None: the shortest window that gives
    # one output step of the last conv (13.09 s for soundnet8, 3.55 s for soundnet5 at 16 kHz). A longer
    # one gives several steps, averaged. Unused by audionet, which hears the dataset's own window.
    window_s: float | None = None
    conv_filters: int = 16  # audionet only
    # Waveforms in [-1, 1] are multiplied by this inside the model. SoundNet feeds about +-256;
    # on the seed-shaped synthetic set with Adam 1e-4, after about 135 epochs the training KL
    # was 2.28 at scale 1, 0.36 at 16 and 0.41 at 256 (KL 1.0 by epoch 30): see docs/training.md, "Input scale".
    input_scale: float = 256.0

    def __post_init__(self) -> None:
        _check(self.architecture in ARCHITECTURES, "model.architecture",
               f"must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        _check(self.window_s is None or (self.window_s > 0 and math.isfinite(self.window_s)), "model.window_s",
               f"must be a positive number of seconds, got {self.window_s}")
        _check(self.conv_filters > 0, "model.conv_filters", f"must be positive, got {self.conv_filters}")
        _check(self.input_scale > 0 and math.isfinite(self.input_scale), "model.input_scale",
               f"must be a positive number, got {self.input_scale}")


# What steps_per_execution = 0 means at most: one epoch of the seed set is 4 steps (one call);
# a VGGSound-size epoch of ~100,000 steps is cut into calls of 100 (a few seconds on a GPU).
AUTO_STEPS_PER_EXECUTION = 100


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe; defaults are the slides' (5000 epochs, batch 512, Adam 1e-4)."""

    data: str | None = None  # dataset directory; None means the pipeline's prepare.out
    epochs: int = 5000
    batch_size: int = 512  # global batch, split across replicas
    learning_rate: float = 1e-4
    temperature: float = 1.0
    devices: int | None = None  # None: every visible GPU, or one CPU replica
    strategy: str = "mirrored"  # mirrored | multiworker
    # multiworker: a worker that sends no heartbeat for this long (dead, frozen, unreachable) is
    # lost, and the others stop with exit status 75. A heartbeat timeout of TensorFlow's
    # coordination service, not a timeout on each collective (those leaked a thread each).
    collective_timeout_s: float = 60.0
    name: str | None = None  # run name; None: the pipeline file's or the dataset directory's name
    runs_dir: str = "runs"
    export_dir: str = "saved_models"
    seed: int = 0
    quiet: bool = False
    deterministic: bool = False
    cache: str = "auto"  # auto | memory | none
    cache_limit_mb: int = 2048  # "auto" caches decoded examples in memory up to this size
    # Training steps per tf.function call, under any strategy. 0: a whole epoch per call, at most AUTO_STEPS_PER_EXECUTION steps, so
    # that backups by time or steps, a SIGTERM and the progress bar act inside long epochs.
    steps_per_execution: int = 0
    shuffle_buffer: int = 10000
    checkpoint_every: int = 10  # epochs between checkpoints and backups (a crash replays at most these)
    # Epochs between evaluations of the held-out clips. Checkpoint epochs and the last epoch are
    # always evaluated (best.keras is picked on fresh val_kl). Evaluating every epoch made an
    # epoch on the seed set about 1.5 times as long: docs/speed.md.
    validate_every: int = 10
    backup_every_steps: int = 0  # also back up after this many steps (0: off); at execution boundaries
    backup_every_minutes: float = 30.0  # also back up when this much time has passed (0: off)
    keep_backups: int = 2  # backups kept; a damaged newest one falls back on the one before
    dataset_wait_s: float = 3600.0  # multiworker: how long workers wait for the chief to prepare the dataset
    histogram_every: int = 50  # epochs between weight histograms and filter images
    # Filter images, timelines and histograms: the first this many at every histogram_every epochs,
    # then half as often over each doubling of the run (what they add to the run directory grows with
    # the log of the epochs, not the epochs). 0: never thinned.
    figures_before_thinning: int = 10
    export: bool = True
    report: bool = True

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", f"must be at least 1, got {self.epochs}")
        _check(self.batch_size >= 1, "train.batch_size", f"must be at least 1, got {self.batch_size}")
        _check(self.learning_rate > 0 and math.isfinite(self.learning_rate), "train.learning_rate",
               f"must be a positive number, got {self.learning_rate}")
        _check(self.temperature > 0 and math.isfinite(self.temperature), "train.temperature",
               f"must be a positive number, got {self.temperature}")
        _check(self.devices is None or self.devices >= 1, "train.devices",
               f"must be at least 1, got {self.devices}")
        _check(self.strategy in ("mirrored", "multiworker"), "train.strategy",
               f"must be 'mirrored' or 'multiworker', got {self.strategy!r}")
        _check(self.collective_timeout_s > 0, "train.collective_timeout_s",
               f"must be positive, got {self.collective_timeout_s}")
        _check(self.cache in ("auto", "memory", "none"), "train.cache",
               f"must be 'auto', 'memory' or 'none', got {self.cache!r}")
        _check(self.cache_limit_mb >= 0, "train.cache_limit_mb", f"must be 0 or more, got {self.cache_limit_mb}")
        _check(self.steps_per_execution >= 0, "train.steps_per_execution",
               f"must be 0 or more, got {self.steps_per_execution}")
        _check(self.shuffle_buffer >= 1, "train.shuffle_buffer", f"must be at least 1, got {self.shuffle_buffer}")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every",
               f"must be at least 1, got {self.checkpoint_every}")
        _check(self.backup_every_steps >= 0, "train.backup_every_steps",
               f"must be 0 or more, got {self.backup_every_steps}")
        _check(self.backup_every_minutes >= 0 and math.isfinite(self.backup_every_minutes),
               "train.backup_every_minutes", f"must be 0 or more, got {self.backup_every_minutes}")
        _check(self.keep_backups >= 1, "train.keep_backups", f"must be at least 1, got {self.keep_backups}")
        _check(self.dataset_wait_s > 0, "train.dataset_wait_s", f"must be positive, got {self.dataset_wait_s}")
        _check(self.validate_every >= 1, "train.validate_every",
               f"must be at least 1, got {self.validate_every}")
        _check(self.histogram_every >= 1, "train.histogram_every",
               f"must be at least 1, got {self.histogram_every}")
        _check(self.figures_before_thinning >= 0, "train.figures_before_thinning",
               f"must be 0 or more, got {self.figures_before_thinning}")
        if self.name is not None:
            _check(bool(self.name) and os.sep not in self.name and self.name not in (".", "..")
                   and not self.name.startswith("-"), "train.name",
                   f"must be a plain directory name, got {self.name!r}")


def _per_channel(values: Any, where: str, positive: bool) -> tuple[float, float, float]:
    """One number per colour channel: three numbers, or one for all three."""
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    _check(len(values) in (1, 3), where, f"must be one number or three (one per channel), got {list(values)}")
    for value in values:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
               and (value > 0 or not positive), where,
               f"must be {'positive ' if positive else ''}numbers, got {list(values)}")
    return tuple(float(v) for v in values) * (3 // len(values))


@dataclass(frozen=True)
class PrepareConfig:
    """Data preparation: where clips come from, the teacher, and how the dataset is written."""

    out: str = "data/dataset"
    manifest: str | None = None  # CSV: project, AudioSet or VGGSound layout
    clips: tuple = ()  # inline clips from a pipeline file: dicts with url, start, duration, label
    teacher: str = DEFAULT_TEACHER  # registry name, .keras file, SavedModel directory or .onnx file
    labels: str | None = None  # class names file for a user's teacher
    teacher_batch: int = 32
    teacher_fold: bool = True  # fold the teacher's weights into its compiled graph (faster); false: run over them
    teacher_cache: bool = True  # keep the folded graph under cache_dir/teachers for the next run's start
    # An ONNX teacher's input (`--teacher model.onnx`; every other kind of teacher preprocesses inside its
    # model): the frame's channels in this order, then x * onnx_scale, then (x - onnx_mean) / onnx_std per
    # channel, mean and std given in the model's channel order (one value: the same for every channel).
    # The defaults are torchvision's ImageNet models': RGB, 1/255, ImageNet's mean and std.
    onnx_channels: str = "RGB"  # RGB | BGR
    onnx_scale: float = 1.0 / 255.0
    onnx_mean: tuple = (0.485, 0.456, 0.406)
    onnx_std: tuple = (0.229, 0.224, 0.225)
    # onnxruntime's intra-op threads for an ONNX teacher; 0: one per core of the machine. Decoding runs beside
    # it at a lower priority (decode_niceness), so the teacher may take every core; where several workers
    # share a machine (Beam, Dask), give each its share: docs/preparation.md, "ONNX teachers".
    onnx_threads: int = 0
    cache_dir: str = "cache/clips"
    holdout: str = "0.2"  # whole clips: a fraction, or comma-separated clip ids ("0": none)
    holdout_part: str = ""  # a part of every clip: a fraction ("0.2") or seconds ("2s"); "": none
    holdout_at: str = "end"  # where in each clip that part lies: end | start | middle
    frame_fit: str = "crop"  # frames to the teacher's size: crop (keep aspect, centre crop) | squash | letterbox
    shard_size: int = 1024  # examples per shard
    shard_clips: int = 16  # clips per open shard group: what a killed prepare can lose at most
    chunk_frames: int = 256  # a longer clip is decoded, labelled and written this many frames at a time
    decode_niceness: int = 10  # ffmpeg's scheduling priority below the teacher's (0: the same; 0-19)
    # A clip whose audio or video ends inside its section keeps the frames that have both their picture and
    # their whole window; it is refused only when fewer than this many seconds are left (a clip that holds
    # everything asked is never refused for its length).
    min_clip_seconds: float = 1.0
    end_slack_ms: float = 5.0  # a window may end this far past the decoded audio (container rounding: zeros)
    audio_format: str = "int16"  # int16 | float32
    logits_format: str = "float16"  # float16 | float32
    retries: int = 3
    margin_s: float = 1.0  # extra seconds downloaded around each section
    strict: bool = False
    overwrite: bool = False
    demo: bool = False  # make the offline demo clips instead of downloading
    # A folder of NAME.svg|png|jpg + NAME.ogg|wav|flac|mp3 pairs: each pair becomes a clip (a slow pan and
    # zoom over the picture, the recording as its sound; preparation/picture_clips.py). None: no such clips.
    pictures: str | None = None
    runner: str | None = None  # Apache Beam runner; None: single process
    index_every: int = 128  # commit records between rewrites of the index while a run commits; 0: only at its end

    def __post_init__(self) -> None:
        _check(bool(self.out), "prepare.out", "must name a directory")
        _check(self.pictures is None or bool(self.pictures), "prepare.pictures", "must name a folder")
        _check(self.teacher_batch >= 1, "prepare.teacher_batch", f"must be at least 1, got {self.teacher_batch}")
        _check(self.shard_size >= 1, "prepare.shard_size", f"must be at least 1, got {self.shard_size}")
        _check(self.chunk_frames >= 1, "prepare.chunk_frames", f"must be at least 1, got {self.chunk_frames}")
        _check(0 <= self.decode_niceness <= 19, "prepare.decode_niceness",
               f"must be from 0 to 19, got {self.decode_niceness}")
        _check(self.shard_clips >= 1, "prepare.shard_clips", f"must be at least 1, got {self.shard_clips}")
        _check(self.audio_format in ("int16", "float32"), "prepare.audio_format",
               f"must be 'int16' or 'float32', got {self.audio_format!r}")
        _check(self.logits_format in ("float16", "float32"), "prepare.logits_format",
               f"must be 'float16' or 'float32', got {self.logits_format!r}")
        _check(self.retries >= 0, "prepare.retries", f"must be 0 or more, got {self.retries}")
        _check(self.index_every >= 0, "prepare.index_every", f"must be 0 or more, got {self.index_every}")
        _check(self.margin_s >= 0, "prepare.margin_s", f"must be 0 or more, got {self.margin_s}")
        _check(self.min_clip_seconds >= 0, "prepare.min_clip_seconds",
               f"must be 0 or more, got {self.min_clip_seconds}")
        _check(0 <= self.end_slack_ms <= 40, "prepare.end_slack_ms",
               f"must be from 0 to 40 ms, got {self.end_slack_ms}")
        _check(self.holdout_at in ("end", "start", "middle"), "prepare.holdout_at",
               f"must be 'end', 'start' or 'middle', got {self.holdout_at!r}")
        _check(self.frame_fit in ("crop", "squash", "letterbox"), "prepare.frame_fit",
               f"must be 'crop', 'squash' or 'letterbox', got {self.frame_fit!r}")
        _check(self.onnx_channels in ("RGB", "BGR"), "prepare.onnx_channels",
               f"must be 'RGB' or 'BGR', got {self.onnx_channels!r}")
        _check(self.onnx_scale > 0 and math.isfinite(self.onnx_scale), "prepare.onnx_scale",
               f"must be a positive number, got {self.onnx_scale}")
        # Stored as three floats whatever was given, so that the same preprocessing is always recorded the same.
        object.__setattr__(self, "onnx_mean", _per_channel(self.onnx_mean, "prepare.onnx_mean", positive=False))
        object.__setattr__(self, "onnx_std", _per_channel(self.onnx_std, "prepare.onnx_std", positive=True))
        _check(self.onnx_threads >= 0, "prepare.onnx_threads", f"must be 0 or more, got {self.onnx_threads}")


@dataclass(frozen=True)
class ExportConfig:
    """What an export writes beside the SavedModel and TFLite files: ONNX, and a page that runs it in a browser."""

    onnx: bool = True  # student.onnx, for onnxruntime (Python, C++, C#, JavaScript) without TensorFlow
    # tf2onnx's own default: run by onnxruntime 1.10 and later, onnxruntime-web and every runtime of 2022 on.
    onnx_opset: int = 15
    web: str | None = None  # a directory to write the browser page to (index.html, student.onnx, the runtime)
    # A directory holding onnxruntime-web's files (the npm package, its dist/ or an npm prefix);
    # None: npm installs web_runtime_version under web_cache once, on the first --web.
    web_runtime: str | None = None
    web_runtime_version: str = "1.31.1"
    web_cache: str = "cache/npm"

    def __post_init__(self) -> None:
        # The opsets tf2onnx 1.17 writes (it refuses 19 and later); the student converts to each of them.
        _check(9 <= self.onnx_opset <= 18, "export.onnx_opset",
               f"must be from 9 to 18 (what tf2onnx writes), got {self.onnx_opset}")
        _check(self.web is None or bool(self.web), "export.web", "must name a directory")
        _check(not (self.web and not self.onnx), "export.web", "the page runs student.onnx: it needs export.onnx")
        _check(bool(self.web_runtime_version), "export.web_runtime_version", "must name an onnxruntime-web version")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning a trained student to a user's own classes (`audionet finetune`, docs/finetune.md)."""

    run: str | None = None  # the trained student's run directory (runs/NAME), or its model.keras
    data: str | None = None  # the labelled CSV (filename,fold,target,category: ESC-50's layout)
    audio_dir: str | None = None  # the CSV's audio; None: audio/ beside the CSV (or beside its meta/ folder)
    layer: str | None = None  # the student layer the new head reads; None: its embedding (pooled, pool5, conv4)
    epochs: int = 40  # the head alone, the student frozen
    learning_rate: float = 1e-2
    # Then the whole network, at a lower rate (0: the student stays as it was distilled).
    unfreeze_epochs: int = 0
    unfreeze_learning_rate: float = 1e-4
    batch_size: int = 64
    class_weights: bool = True  # weigh each class's windows by (windows / classes) / its windows
    holdout_fold: int | None = None  # a fold of the CSV kept out of training and scored every epoch
    hop_s: float | None = None  # seconds between a clip's windows; None: the student's own hop
    name: str | None = None  # run name; None: <student run>-<CSV name>
    runs_dir: str = "runs"
    export_dir: str = "saved_models"
    export: bool = True
    seed: int = 0
    quiet: bool = False

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "finetune.epochs", f"must be at least 1, got {self.epochs}")
        _check(self.unfreeze_epochs >= 0, "finetune.unfreeze_epochs", f"must be 0 or more, got {self.unfreeze_epochs}")
        for key in ("learning_rate", "unfreeze_learning_rate"):
            value = getattr(self, key)
            _check(value > 0 and math.isfinite(value), f"finetune.{key}", f"must be a positive number, got {value}")
        _check(self.batch_size >= 1, "finetune.batch_size", f"must be at least 1, got {self.batch_size}")
        _check(self.holdout_fold is None or self.holdout_fold >= 0, "finetune.holdout_fold",
               f"must be 0 or more, got {self.holdout_fold}")
        _check(self.hop_s is None or (self.hop_s > 0 and math.isfinite(self.hop_s)), "finetune.hop_s",
               f"must be a positive number of seconds, got {self.hop_s}")
        if self.name is not None:
            _check(bool(self.name) and os.sep not in self.name and self.name not in (".", "..")
                   and not self.name.startswith("-"), "finetune.name",
                   f"must be a plain directory name, got {self.name!r}")


@dataclass(frozen=True)
class PipelineConfig:
    """A whole experiment: one pipeline file's sections."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    source: str | None = None  # the pipeline file it came from

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, for the run directory's config.json."""
        return dataclasses.asdict(self)

    @property
    def data_dir(self) -> str:
        """The dataset directory training reads: train.data, or else prepare.out."""
        return self.train.data or self.prepare.out


SECTIONS = {"audio": AudioConfig, "model": ModelConfig, "train": TrainConfig, "prepare": PrepareConfig,
            "export": ExportConfig, "finetune": FinetuneConfig}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Turn a TOML value into the field's type, refusing what does not fit."""
    text = str(annotation)
    if value is None:
        _check("None" in text, where, "cannot be empty")
        return None
    if text.startswith("bool"):
        _check(isinstance(value, bool), where, f"must be true or false, got {value!r}")
        return value
    if text.startswith("int"):
        _check(isinstance(value, int) and not isinstance(value, bool), where, f"must be a whole number, got {value!r}")
        return value
    if text.startswith("float"):
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), where,
               f"must be a number, got {value!r}")
        return float(value)
    if text.startswith("tuple"):
        _check(isinstance(value, (list, tuple)), where, f"must be a list, got {value!r}")
        return tuple(value)
    if text.startswith("str"):
        if isinstance(value, (list, tuple)) and where.endswith("holdout"):
            return ",".join(str(v) for v in value)
        _check(isinstance(value, (str, int, float)) and not isinstance(value, bool), where,
               f"must be text, got {value!r}")
        return str(value)
    return value


def build_section(cls: type, values: Mapping[str, Any], where: str, base: Any = None) -> Any:
    """Build one settings section from a mapping, naming any unknown key or bad value."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = dataclasses.asdict(base) if base is not None else {}
    for key, value in values.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {known})")
        kwargs[key] = _coerce(value, fields[key].type, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


RECIPES = ("demo", "seed", "real")  # the built-in pipelines (`pipelines/*.toml`, shipped in the wheel as audionet_tf.recipes)


def recipe_path(name: str) -> str | None:
    """The file of a built-in recipe (`demo`, `seed`, `real`): from the installed package, else beside it in a checkout."""
    if name not in RECIPES:
        return None
    try:
        from importlib import resources

        shipped = resources.files("audionet_tf.recipes").joinpath(f"{name}.toml")
        if shipped.is_file():
            return str(shipped)
    except (ModuleNotFoundError, TypeError):
        pass  # a source checkout run from PYTHONPATH: no recipes package, the files are in pipelines/
    beside = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "pipelines", f"{name}.toml")
    return beside if os.path.isfile(beside) else None


def find_pipeline(path: str | os.PathLike) -> str:
    """A pipeline file as given when it exists, else the built-in recipe it names (`demo`, `pipelines/demo.toml`)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    stem = os.path.basename(path)
    stem = stem[:-5] if stem.endswith(".toml") else stem
    if path in (stem, f"{stem}.toml", os.path.join("pipelines", f"{stem}.toml")):
        found = recipe_path(stem)
        if found:
            return found
    raise ConfigError(f"pipeline file {path} does not exist (built-in recipes by name: {', '.join(RECIPES)})")


def load_pipeline(path: str | os.PathLike | None) -> PipelineConfig:
    """Read a pipeline TOML file, or a built-in recipe by name (`demo`, `seed`, `real`); the defaults for None."""
    if path is None:
        return PipelineConfig()
    path = find_pipeline(path)
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    sections = {}
    for name, cls in SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
        sections[name] = build_section(cls, table, f"{path} [{name}]")
    # Relative paths in a pipeline file are relative to the working directory, like flags.
    return PipelineConfig(**sections, source=path)


def override(config: PipelineConfig, section: str, values: Mapping[str, Any]) -> PipelineConfig:
    """Return `config` with the non-None `values` (parsed flags) set in `section`."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return config
    current = getattr(config, section)
    updated = build_section(type(current), given, f"--{section} flags", base=current)
    return dataclasses.replace(config, **{section: updated})
