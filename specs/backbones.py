"""What convspec knows about timm backbones without torch: a shipped table, and timm's model names.

``backbones.json`` is written by ``bench/make_backbone_table.py`` (timm, random weights, no
network) and checked against timm by ``tests/compiler/test_backbone.py``. Per name it holds:
the pooled output's channels and the last feature map's channels; the feature map's stride
and rounding (its height is ``ceil(H / stride)`` or ``floor(H / stride)`` of the input's H, and
so for W); the parameters of each stage, for 1 and 3 input channels (the stem follows
``input.channels``); the parameters and MACs only the pooled head uses (dropped with
``output: features``); MACs at 224x224 (scaled by pixel count for other sizes); and timm's
pretrained mean and std. It also lists every model name of the timm version it was made with,
so that ``validate`` checks a name outside the table without importing timm (which imports torch).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

TABLE_FILE = Path(__file__).with_name("backbones.json")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneInfo:
    """Shapes and counts of one timm backbone (``num_classes=0``).

    Attributes:
        name: the timm model name.
        pooled_channels: features of ``output: pooled``.
        feature_channels: channels of ``output: features`` (None: no image feature map).
        reduction, rounding: the feature map is ``rounding(H / reduction)`` high (``ceil`` or ``floor``).
        stage_params: input channels -> parameters of each stage (``trainable: N`` trains the last N).
        head_params, head_modules: parameters and modules that only the pooled head uses.
        macs: input channels -> MACs of the pooled output at ``macs_size``.
        head_macs: MACs of the pooled head alone at ``macs_size``.
        mean, std: timm's pretrained statistics (3 values), or None.
        source: ``table`` (shipped) or ``torch`` (measured by ``summary``).
    """

    name: str
    pooled_channels: int
    feature_channels: int | None
    reduction: int | None
    rounding: str | None
    stage_params: dict[int, list[int]]
    head_params: int
    head_modules: tuple[str, ...]
    macs: dict[int, int]
    head_macs: int
    macs_size: tuple[int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source: str = "table"
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def stages(self) -> int:
        return len(next(iter(self.stage_params.values())))

    def feature_hw(self, h: int, w: int) -> tuple[int, int]:
        """Height and width of the last feature map for an ``h`` x ``w`` input."""
        if self.reduction is None:
            raise ValueError(f"{self.name} has no image feature map")
        f = math.ceil if self.rounding == "ceil" else math.floor
        return int(f(h / self.reduction)), int(f(w / self.reduction))

    def out_shape(self, output: str, h: int, w: int) -> tuple[int, ...]:
        """``(C,)`` for ``pooled``, ``(C, h, w)`` for ``features``."""
        if output == "pooled":
            return (self.pooled_channels,)
        return (self.feature_channels, *self.feature_hw(h, w))  # type: ignore[return-value]

    def params(self, in_chans: int, output: str = "pooled") -> int:
        total = sum(self.stage_params[in_chans])
        return total - (self.head_params if output == "features" else 0)

    def frozen_params(self, in_chans: int, trainable: bool | int, output: str = "pooled") -> int:
        """Parameters that do not train: all (false), none (true), or those before the last N stages."""
        if trainable is True:
            return 0
        if trainable is False:
            return self.params(in_chans, output)
        per = self.stage_params[in_chans]
        return sum(per[: max(len(per) - int(trainable), 0)])

    def macs_at(self, in_chans: int, h: int, w: int, output: str = "pooled") -> int:
        """MACs at ``h`` x ``w``: the count at ``macs_size``, scaled by pixel count (exact when measured there)."""
        macs = self.macs[in_chans] - (self.head_macs if output == "features" else 0)
        if (h, w) == tuple(self.macs_size):
            return macs
        return round(macs * (h * w) / (self.macs_size[0] * self.macs_size[1]))


def _info(name: str, row: dict) -> BackboneInfo:
    return BackboneInfo(
        name=name,
        pooled_channels=row["pooled_channels"],
        feature_channels=row["feature_channels"],
        reduction=row["reduction"],
        rounding=row["rounding"],
        stage_params={int(k): list(v) for k, v in row["stage_params"].items()},
        head_params=row["head_params"],
        head_modules=tuple(row["head_modules"]),
        macs={int(k): v for k, v in row["macs"].items()},
        head_macs=row["head_macs"],
        macs_size=tuple(row["macs_size"]),
        mean=tuple(row["mean"]) if row.get("mean") else None,
        std=tuple(row["std"]) if row.get("std") else None,
    )


@functools.lru_cache(maxsize=1)
def _load() -> tuple[str, dict[str, BackboneInfo], frozenset[str]]:
    data = json.loads(TABLE_FILE.read_text("utf-8"))
    table = {name: _info(name, row) for name, row in data["backbones"].items()}
    return data["timm_version"], table, frozenset(data["timm_names"])


def table() -> dict[str, BackboneInfo]:
    """The shipped table: name -> :class:`BackboneInfo`."""
    return _load()[1]


def timm_names() -> frozenset[str]:
    """Every model name of the timm version the table was made with (``timm.list_models()``)."""
    return _load()[2]


def table_timm_version() -> str:
    return _load()[0]


def arch(name: str) -> str:
    """``resnet18.a1_in1k`` -> ``resnet18`` (timm's pretrained tag does not change the shapes)."""
    return name.split(".", 1)[0]


def lookup(name: str, measured: dict[str, BackboneInfo] | None = None) -> BackboneInfo | None:
    """The table's (or a measured) entry for ``name`` or its architecture; None when neither has it."""
    for source in (measured or {}, table()):
        for key in (name, arch(name)):
            if key in source:
                return source[key]
    return None


def installed_timm_version() -> str | None:
    """timm's installed version, read from its metadata (no import, so no torch)."""
    try:
        return importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return None


def close_names(name: str, n: int = 5) -> list[str]:
    import difflib

    names = sorted(set(table()) | timm_names())
    return difflib.get_close_matches(name, names, n=n, cutoff=0.6)


def check_name(name: str) -> tuple[str | None, str | None]:
    """``(error, warning)`` about a backbone name, torch-free.

    A name in the table or in timm's list is fine. Another is an error with close matches
    when the installed timm is the version the list was made with (or timm is missing);
    when another timm is installed, only a warning: that timm may know it, and ``summary``
    (which imports it) checks.
    """
    if lookup(name) is not None or arch(name) in timm_names():
        return None, None
    close = close_names(name)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    have = installed_timm_version()
    made = table_timm_version()
    if have is None or have == made:
        return f"timm {made} has no model {name!r}{hint}", None
    return None, (
        f"{name!r} is not among timm {made}'s models (convspec's list); the installed timm {have} may know it: "
        f"`convspec summary` checks with timm{hint}"
    )


def normalize_values(kind: str, backbone_name: str | None, channels: int) -> tuple[list[float], list[float]] | None:
    """Mean and std for ``normalize: {mean: imagenet | backbone}`` at ``channels`` channels.

    One channel takes the mean of the three values (mean and std alike). Returns None for
    ``backbone`` when the name is outside the table (the compiler asks timm).
    """
    if kind == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        info = lookup(backbone_name) if backbone_name else None
        if info is None or not info.mean or not info.std:
            return None
        mean, std = info.mean, info.std
    return per_channel(mean, channels), per_channel(std, channels)


def per_channel(values, channels: int) -> list[float]:
    """Three RGB statistics as ``channels`` values: unchanged for 3, their mean for 1."""
    values = [float(v) for v in values]
    if channels == len(values):
        return values
    if channels == 1:
        return [sum(values) / len(values)]
    raise ValueError(f"{len(values)} statistics for {channels} channels")
