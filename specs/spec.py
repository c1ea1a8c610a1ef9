"""The top-level spec: data, input, preprocess, augment, model, training, tune, export."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, PrivateAttr, Tag, field_validator
from pydantic import Strict as PydanticStrict

from .base import DEVICE_PATTERN, ClassName, NonNegInt, Pair, PosInt, Seed, Strict
from .classes import BITS_STORED
from .interrupts import held_interrupt
from .layers import Layer
from .pipeline import AugmentStep, PreprocessStep

# ---------------------------------------------------------------------- data


class BuiltinSource(Strict):
    """A data set that ships with an installed package (``digits``: scikit-learn's 8x8 digits)."""

    type: Literal["builtin"]
    name: Literal["digits"]
    classes: Annotated[list[ClassName], Field(min_length=2)] | None = None


class FolderSource(Strict):
    """One sub-folder per class (ImageFolder layout), or train/ val/ test/ with ``split.from: folders``."""

    type: Literal["folder"]
    path: str


class CsvSource(Strict):
    """A CSV with columns ``path,label``; paths relative to ``root`` (default: the CSV's folder).

    ``allow_outside_root``: paths that leave ``root`` (``../x.png``, absolute paths) are refused,
    naming the row, unless this is true.
    """

    type: Literal["csv"]
    path: str
    root: str | None = None
    allow_outside_root: bool = False


Source = Annotated[BuiltinSource | FolderSource | CsvSource, Field(discriminator="type")]

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class Split(Strict):
    """Fractions of the data for train / val / test, or ``from: folders``."""

    from_: Literal["fractions", "folders"] = Field("fractions", alias="from")
    train: Fraction = 0.8
    val: Fraction = 0.1
    test: Fraction = 0.1
    stratify: bool = True
    seed: Seed = 0


class Data(Strict):
    source: Source
    split: Split = Split()
    cache: Literal["auto", "memory", "disk", "none"] = "auto"
    on_bad_image: Literal["skip", "error"] = "skip"


class Input(Strict):
    channels: Literal[1, 3]
    size: Pair
    resize: Literal["stretch", "letterbox", "crop"] = "stretch"
    # 16-bit grey images hold values up to 2**bits_stored - 1 (DICOM's BitsStored: 12 for most
    # X-rays and CT); they are scaled by 255 / (2**bits_stored - 1) to 8 bits, larger values clip.
    bits_stored: Annotated[int, PydanticStrict(), Field(ge=BITS_STORED[0], le=BITS_STORED[1])] = 16


class Model(Strict):
    layers: list[Layer]
    head: bool = True


# ------------------------------------------------------------------ training


class SGD(Strict):
    type: Literal["sgd"]
    lr: Annotated[float, Field(gt=0)] = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = False
    weight_decay: Annotated[float, Field(ge=0)] = 0.0


class Adam(Strict):
    type: Literal["adam"]
    lr: Annotated[float, Field(gt=0)] = 0.001
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    betas: tuple[float, float] = (0.9, 0.999)


class AdamW(Strict):
    type: Literal["adamw"]
    lr: Annotated[float, Field(gt=0)] = 0.001
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    betas: tuple[float, float] = (0.9, 0.999)


Optimizer = Annotated[SGD | Adam | AdamW, Field(discriminator="type")]


class _Warmup(Strict):
    warmup_epochs: Annotated[float, Field(ge=0)] = 0


class NoScheduler(_Warmup):
    type: Literal["none"]


class StepScheduler(_Warmup):
    type: Literal["step"]
    step_size: PosInt = 10
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1


class CosineScheduler(_Warmup):
    type: Literal["cosine"]
    min_lr: Annotated[float, Field(ge=0)] = 0.0


class OneCycleScheduler(_Warmup):
    type: Literal["onecycle"]
    pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.3


class PlateauScheduler(_Warmup):
    type: Literal["plateau"]
    factor: Annotated[float, Field(gt=0, lt=1)] = 0.1
    patience: Annotated[int, Field(ge=0)] = 2


Scheduler = Annotated[
    NoScheduler | StepScheduler | CosineScheduler | OneCycleScheduler | PlateauScheduler,
    Field(discriminator="type"),
]


class Loss(Strict):
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    class_weights: Literal["none", "balanced"] | list[Annotated[float, Field(gt=0)]] = "none"


Metric = Literal["accuracy", "precision", "recall", "f1", "auc"]
Monitor = Literal[
    "val_loss",
    "val_accuracy",
    "val_precision",
    "val_recall",
    "val_f1",
    "val_auc",
]


class EarlyStopping(Strict):
    monitor: Monitor = "val_loss"
    patience: PosInt = 5
    mode: Literal["auto", "min", "max"] = "auto"
    min_delta: Annotated[float, Field(ge=0)] = 0.0


class Training(Strict):
    epochs: PosInt = 10
    batch_size: PosInt = 32
    optimizer: Optimizer = AdamW(type="adamw")
    scheduler: Scheduler = NoScheduler(type="none")
    loss: Loss = Loss()
    early_stopping: EarlyStopping | None = None
    metrics: list[Metric] = ["accuracy"]
    device: Annotated[str, Field(pattern=f"^({DEVICE_PATTERN})$")] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: Seed = 0
    grad_clip: Annotated[float, Field(gt=0)] | None = None
    compile: bool = False
    loggers: list[Literal["tensorboard", "mlflow"]] = Field(
        [], description="experiment trackers: TensorBoard events in RUN/tensorboard/, an MLflow run"
    )
    # Transfer learning (SPEC.md "Transfer learning"): start weights, frozen layers, when they thaw.
    init: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="a run folder, a convspec checkpoint (.pt) or a .safetensors state dict"
    )
    freeze: list[NonNegInt | Literal["backbone"]] = Field([], description="indices into model.layers, or backbone")
    unfreeze_epoch: PosInt | None = Field(None, description="frozen layers train from this epoch on; default never")


# ---------------------------------------------------------------------- tune


class FloatDist(Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: Annotated[float, Field(gt=0)] | None = None


class IntDist(Strict):
    type: Literal["int"]
    low: int
    high: int
    step: PosInt = 1
    log: bool = False


class ChoiceDist(Strict):
    type: Literal["choice"]
    values: Annotated[list[Any], Field(min_length=1)]


Distribution = Annotated[FloatDist | IntDist | ChoiceDist, Field(discriminator="type")]


class Tune(Strict):
    trials: PosInt = 20
    timeout: Annotated[float, Field(gt=0)] | None = None
    metric: Monitor = "val_accuracy"
    direction: Literal["maximize", "minimize"] | None = Field(None, description="default: from metric")
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "none"] = "median"
    space: dict[str, Distribution] = {}

    @property
    def resolved_direction(self) -> str:
        if self.direction:
            return self.direction
        return "minimize" if self.metric.endswith("loss") else "maximize"


class MetricThreshold(Strict):
    """The threshold of the best validation F1 (positive class) or Youden's J."""

    metric: Literal["f1", "youden"]


class RecallThreshold(Strict):
    """The highest threshold whose validation recall (sensitivity) is at least ``recall``."""

    recall: Annotated[float, Field(gt=0, le=1)]


class PrecisionThreshold(Strict):
    """The lowest threshold whose validation precision is at least ``precision``."""

    precision: Annotated[float, Field(gt=0, le=1)]


def _threshold_kind(value: Any) -> str | None:
    """Which form of ``export.threshold`` a value is (None: none; pydantic then reports the expected forms).

    Why "-rule" tags: a tag equal to the rule's key ("recall") read as a key in error locations.
    """
    if isinstance(value, dict):  # exactly one rule (two would be named as an unknown key of the first)
        kinds = [k for k in ("metric", "recall", "precision") if k in value]
        return f"{kinds[0]}-rule" if len(kinds) == 1 else None
    if isinstance(value, (MetricThreshold, RecallThreshold, PrecisionThreshold)):
        return f"{next(iter(type(value).model_fields))}-rule"
    return "fixed"


# Why a callable discriminator: a plain union reports every branch's failure (4 lines for one typo)
Threshold = Annotated[
    Annotated[Annotated[float, Field(ge=0, le=1)], Tag("fixed")]
    | Annotated[MetricThreshold, Tag("metric-rule")]
    | Annotated[RecallThreshold, Tag("recall-rule")]
    | Annotated[PrecisionThreshold, Tag("precision-rule")],
    Discriminator(
        _threshold_kind,
        custom_error_type="threshold_form",
        custom_error_message="expected a number in [0, 1], {metric: f1 | youden}, {recall: R} or {precision: P}",
    ),
]


class Export(Strict):
    opset: Annotated[int, Field(ge=18, le=23)] = 18  # Why not 17: the dynamo exporter writes 18 at least
    dynamic_batch: bool = True
    quantize: Literal["none", "int8"] = "none"
    calibration_images: PosInt = 256
    threshold: Threshold = Field(0.5, description="binary only: the operating threshold, chosen on validation")


# ---------------------------------------------------------------------- spec


class Warnings(list):
    """The loader's warnings (Issues) about a spec.

    Why a list whose equality ignores positions: a spec loaded from its file and from its own
    ``to_yaml()`` is the same spec, and gets the same warnings at other lines.
    """

    def __eq__(self, other):
        key = lambda ws: [(w.message, w.path) for w in ws]  # noqa: E731
        return isinstance(other, list) and key(self) == key(other)

    __hash__ = None  # type: ignore[assignment]


class Spec(Strict):
    """A whole convspec file. Build one with :func:`convspec.specs.load_spec`."""

    version: Literal[1]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] | None = None
    task: Literal["binary", "multiclass"]
    classes: Literal["auto"] | Annotated[list[ClassName], Field(min_length=2)] | Annotated[int, Field(ge=2)] = "auto"
    data: Data
    input: Input
    preprocess: list[PreprocessStep] = []
    augment: list[AugmentStep] = []
    model: Model
    training: Training = Training()
    tune: Tune | None = None
    export: Export = Export()

    # Where the spec came from; set by the loader, not part of the language.
    _source: str = PrivateAttr("<spec>")
    _base_dir: str = PrivateAttr(".")
    _warnings: list = PrivateAttr(default_factory=Warnings)

    @field_validator("classes")
    @classmethod
    def _classes_unique(cls, classes):
        # Why a field validator: the error then points at the classes line, not the document.
        if isinstance(classes, list) and len(set(classes)) != len(classes):
            dup = sorted({c for c in classes if classes.count(c) > 1})
            raise ValueError(f"classes must be unique (repeated: {', '.join(dup)})")
        return classes

    def __eq__(self, other):
        """Specs are equal when they say the same: where they were read from (``_source``) is not
        part of the language, so a spec equals itself reloaded from ``to_yaml()`` or ``to_dict()``."""
        if not isinstance(other, Spec):
            return NotImplemented
        return self.__dict__ == other.__dict__ and self._warnings == other._warnings

    __hash__ = None  # type: ignore[assignment]

    @property
    def source_file(self) -> str:
        return self._source

    @property
    def base_dir(self) -> str:
        return self._base_dir

    @property
    def warnings(self) -> list:
        """Issues the loader found that do not make the spec invalid (``validate`` prints them)."""
        return list(self._warnings)

    def summary(self, measured: dict | None = None):
        """Shapes, parameters and MACs per layer (see :class:`convspec.specs.shapes.Summary`).

        Args:
            measured: backbone name -> ``BackboneInfo`` measured with torch, for names outside the table.
        """
        from .shapes import summarize

        return summarize(self, measured)

    def num_classes(self) -> int | None:
        """Number of classes if known without reading images; None where the data is unreadable."""
        from .classes import static_class_names

        if isinstance(self.classes, int):
            return self.classes
        if isinstance(self.classes, list):
            return len(self.classes)
        names = static_class_names(self)
        return None if names is None else len(names)

    def output_units(self) -> int | None:
        """Units of the automatic head: 1 for binary, the class count for multiclass."""
        if self.task == "binary":
            return 1
        return self.num_classes()

    def to_dict(self) -> dict:
        """The spec as plain data, with defaults filled in (YAML/JSON-ready)."""
        with held_interrupt():  # Why: pydantic-core would turn a Ctrl-C landing in a discriminator into a warning
            return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_yaml(self) -> str:
        """The resolved spec as YAML text, loadable by ``load_spec_text``."""
        from .yamlio import dump_yaml

        return dump_yaml(self.to_dict())
