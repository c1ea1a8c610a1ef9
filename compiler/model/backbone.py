"""The ``backbone`` layer: a timm image network as the first layer of a compiled spec.

``timm.create_model(name, pretrained=(weights == "pretrained"), num_classes=0, in_chans=C)``;
``weights: PATH`` then loads a ``.safetensors`` or ``.pth`` state dict from disk (safely:
safetensors, or ``torch.load(weights_only=True)``). ``output: pooled`` is timm's pooled
``(N, C)`` vector (its ``forward`` without a classifier), ``features`` the last feature map
``(N, C, H, W)`` of ``forward_features``; the modules only the pooled head uses are dropped.

Stages (for ``trainable: N``): timm's ``feature_info`` names one module per output stride
(resnet: act1, layer1..layer4; efficientnet: blocks.0, blocks.1, blocks.2, blocks.4, blocks.6;
convnext: stages.0..3; regnety: stem, s1..s4). Stage k holds every parameter from after the
module of stage k-1 up to the end of the module of stage k, in the model's module order; the
stem belongs to stage 0, and whatever follows the last module (a head conv, a head norm) to the
last stage. ``trainable: N`` trains the last N stages; frozen parameters get
``requires_grad=False`` and the batch norms of frozen parts stay in eval mode (running
statistics fixed) even when the model is put in train mode.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from convspec.specs.backbones import BackboneInfo, lookup, timm_names
from convspec.specs.errors import ConvspecError
from convspec.specs.extras import require
from convspec.specs.layers import Backbone
from convspec.specs.readfile import FileReadError, check_regular

from ..run.checkpoint import why_not_a_torch_file
from .hub import cache_folder, offline_when_unreachable

Shape = tuple[int, ...]
log = logging.getLogger("convspec.backbone")

_LOAD_WEIGHTS = contextvars.ContextVar("convspec_backbone_load_weights", default=True)


class BackboneError(ConvspecError):
    """A backbone that cannot be built: unknown name, missing or unfitting weights file."""


@contextlib.contextmanager
def no_weight_loading() -> Iterator[None]:
    """Build backbones with random weights (no download, no file read) inside this block.

    For code that overwrites every weight right after building (export, resume from a
    checkpoint), so that neither the network nor the original weights file is needed.
    """
    token = _LOAD_WEIGHTS.set(False)
    try:
        yield
    finally:
        _LOAD_WEIGHTS.reset(token)


# ------------------------------------------------------------------ timm


def timm_module():
    return require("timm", "timm", "backbone layers")


def unknown_name_error(name: str) -> BackboneError:
    """The error for a name timm does not know, with close matches from the table and timm."""
    timm = timm_module()
    names = sorted(set(timm.list_models()) | timm_names())
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return BackboneError(f"model.layers[0].name: timm {timm.__version__} has no model {name!r}{hint}")


def create_timm(name: str, in_chans: int, pretrained: bool = False) -> nn.Module:
    """``timm.create_model(name, pretrained, num_classes=0, in_chans)``, with clear errors."""
    timm = timm_module()
    if not timm.is_model(name.split(".")[0]):
        raise unknown_name_error(name)
    with offline_when_unreachable() if pretrained else contextlib.nullcontext() as offline:
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans)
        except Exception as e:  # noqa: BLE001 - a damaged cached file raises safetensors' own error type
            if offline and type(e).__name__ in _NOT_CACHED:
                raise BackboneError(
                    f"model.layers[0]: the pretrained weights of {name!r} are not in huggingface_hub's cache "
                    f"({cache_folder()}) and {offline}; offline, save the weights to a file and "
                    "give its path as weights:"
                ) from None
            what = "download the pretrained weights of" if pretrained else "create"
            reason = str(e).splitlines()[0][:200] if str(e).strip() else ""
            raise BackboneError(
                f"model.layers[0]: timm could not {what} {name!r} ({type(e).__name__}: {reason})"
                + (
                    f"; a damaged download in {cache_folder()} is fetched again once deleted; offline, save the "
                    "weights to a file and give its path as weights:"
                    if pretrained
                    else ""
                )
            ) from None


# huggingface_hub's errors for a file that is not in its cache (offline mode, or no network)
_NOT_CACHED = ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "EntryNotFoundError", "HfHubHTTPError")


def stage_index(model: nn.Module) -> tuple[int, dict[str, int]]:
    """``(number of stages, {parameter name: stage})`` from timm's ``feature_info`` (see module doc)."""
    info = getattr(model, "feature_info", None)
    bounds = [f["module"] for f in info] if isinstance(info, list) and info else []
    order = [n for n, _ in model.named_modules()]
    pos = {n: i for i, n in enumerate(order)}
    ends = []
    for b in bounds:
        if b not in pos:
            continue
        ends.append(max(i for i, n in enumerate(order) if n == b or n.startswith(b + ".")))
    stages = max(len(ends), 1)
    where = {}
    for pname, _ in model.named_parameters():
        owner = pname.rsplit(".", 1)[0] if "." in pname else ""
        p = pos.get(owner, len(order))
        where[pname] = next((k for k, end in enumerate(ends) if p <= end), stages - 1)
    return stages, where


def head_only_modules(model: nn.Module, in_chans: int, size: tuple[int, int]) -> list[str]:
    """Modules with parameters that ``forward_features`` never calls (used by the pooled head only)."""
    called: set[str] = set()
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o, n=n: called.add(n))
        for n, m in model.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    ]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.forward_features(torch.zeros(1, in_chans, *size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    unused = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False)) and n not in called]
    # Keep only the outermost of nested unused modules.
    return [n for n in unused if not any(n.startswith(u + ".") for u in unused if u != n)]


def _drop(model: nn.Module, names: list[str]) -> None:
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())


def count_macs(model: nn.Module, x: torch.Tensor, features: bool = False) -> int:
    """Multiply-accumulates of convolutions and matrix products (torch's FLOP counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.forward_features(x) if features else model(x)
    finally:
        model.train(was)
    return int(counter.get_total_flops()) // 2


def probe(name: str, in_chans: int, size: tuple[int, int], macs_size: tuple[int, int] | None = None) -> BackboneInfo:
    """Measure a backbone with torch (random weights, no network): what the shipped table holds.

    Args:
        name: a timm model name.
        in_chans: the input channels the parameter counts and MACs are for.
        size: ``(H, W)`` at which the output shapes are checked and the head modules found.
        macs_size: ``(H, W)`` of the MAC count (default ``size``).
    """
    model = create_timm(name, in_chans).eval()
    x = torch.zeros(1, in_chans, *size)
    with torch.no_grad():
        pooled = model(x)
        feats = model.forward_features(x)
    stages, where = stage_index(model)
    stage_params = [0] * stages
    for pname, p in model.named_parameters():
        stage_params[where[pname]] += p.numel()
    head = head_only_modules(model, in_chans, size)
    head_params = sum(p.numel() for n in head for p in model.get_submodule(n).parameters())
    reduction, rounding = _reduction(model, in_chans, feats.shape[2:] if feats.ndim == 4 else None, size)
    msize = macs_size or size
    xm = torch.zeros(1, in_chans, *msize)
    macs = count_macs(model, xm)
    head_macs = macs - count_macs(model, xm, features=True)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return BackboneInfo(
        name=name,
        pooled_channels=int(pooled.shape[1]),
        feature_channels=int(feats.shape[1]) if feats.ndim == 4 else None,
        reduction=reduction,
        rounding=rounding,
        stage_params={in_chans: stage_params},
        head_params=head_params,
        head_modules=tuple(head),
        macs={in_chans: macs},
        head_macs=head_macs,
        macs_size=tuple(msize),
        mean=tuple(float(v) for v in cfg.get("mean", ())) or None,
        std=tuple(float(v) for v in cfg.get("std", ())) or None,
        source="torch",
    )


def _reduction(model: nn.Module, in_chans: int, hw, size) -> tuple[int | None, str | None]:
    """Feature-map stride and rounding (``ceil`` or ``floor`` of size / stride) that fit every size tried."""
    if hw is None:
        return None, None
    reduction = int(round(size[0] / int(hw[0])))
    tried = sorted({size[0], 2 * reduction + 1, 3 * reduction - 1, 5 * reduction + 3})
    fits = {"ceil": True, "floor": True}
    with torch.no_grad():
        for s in tried:
            got = int(model.forward_features(torch.zeros(1, in_chans, s, s)).shape[2])
            fits["ceil"] &= got == math.ceil(s / reduction)
            fits["floor"] &= got == s // reduction
    rounding = next((k for k, ok in fits.items() if ok), None)
    return (reduction, rounding) if rounding else (None, None)


# ------------------------------------------------------------------ weights


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or ``.pth``/``.pt`` (``weights_only``), unwrapped.

    Accepts a plain state dict, or one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``,
    and strips a ``module.`` prefix (DDP).
    """
    try:
        check_regular(path, "weights")  # Why: safetensors and torch.load open a FIFO and wait forever
    except FileReadError as e:
        raise BackboneError(f"model.layers[0].weights: {e}") from None
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".safetensors":
            st = require("safetensors.torch", "timm", "backbone weights files")
            sd = st.load_file(path)
        elif ext in (".pth", ".pt", ".bin"):
            not_one = why_not_a_torch_file(Path(path))
            if not_one:
                raise BackboneError(f"model.layers[0].weights: {path} is not a readable state dict: {not_one}")
            sd = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise BackboneError(
                f"model.layers[0].weights: {path}: expected a .safetensors, .pth or .pt file (got {ext or 'no suffix'})"
            )
    except BackboneError:
        raise
    except Exception as e:  # Why broad: a truncated zip, a pickle with code in it, a bad header all land here
        raise BackboneError(
            f"model.layers[0].weights: {path} is not a readable state dict ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BackboneError(f"model.layers[0].weights: {path} holds no state dict (a mapping of names to tensors)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_weights(model: nn.Module, path: str, name: str) -> dict:
    """Copy a weights file into a timm model (built with ``num_classes=0``).

    The classifier's tensors (timm's ``pretrained_cfg["classifier"]``) are dropped, as timm
    does; a 3-channel stem is adapted to a 1-channel one as timm adapts pretrained weights.

    Returns:
        ``{"file", "loaded", "unexpected", "adapted"}``: counts and key names, for the log.

    Raises:
        BackboneError: the file is missing or unreadable, lacks some of the model's tensors, or
            a tensor's shape differs (the first such key and both shapes are named).
    """
    sd = read_state_dict(path)
    own = model.state_dict()
    kept, adapted, missing = _fit(model, {k: tuple(v.shape) for k, v in sd.items()}, path, name)
    sd = {k: v for k, v in sd.items() if k in kept}
    if adapted:
        from timm.models import adapt_input_conv

        sd.update({k: adapt_input_conv(1, sd[k]) for k in adapted})
    unexpected = [k for k in sd if k not in own]
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    if unexpected:
        log.warning(
            "%s: ignored %d tensors %s does not have: %s%s",
            path,
            len(unexpected),
            name,
            ", ".join(unexpected[:8]),
            ", ..." if len(unexpected) > 8 else "",
        )
    return {"file": path, "loaded": len(own) - len(missing), "unexpected": unexpected, "adapted": adapted}


def check_weights_file(layer: Backbone, in_chans: int) -> None:
    """Refuse a ``weights:`` file that does not fit ``layer`` before any image is decoded.

    Why: the model is built after the data (its class count), so a file of another architecture
    was named only after a 10,000-image decode. Here the model is built on the meta device (no
    memory) and the file's shapes are read without its tensors where the format allows.
    """
    if layer.weights_file is None:
        return
    try:
        with torch.device("meta"):
            model = timm_module().create_model(layer.name, num_classes=0, in_chans=in_chans)
    except Exception:  # noqa: BLE001 - one that cannot be built on the meta device is checked when built
        return
    _fit(model, _file_shapes(layer.weights_file), layer.weights_file, layer.name)


def _file_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a weights file: safetensors' header, or a lazily mapped torch file."""
    if os.path.splitext(path)[1].lower() == ".safetensors":
        try:
            check_regular(path, "weights")
            st = require("safetensors", "timm", "backbone weights files")
            with st.safe_open(path, framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
        except Exception:  # noqa: BLE001 - read_state_dict says what is wrong with the file
            pass
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


def _fit(model: nn.Module, shapes: dict[str, tuple[int, ...]], path: str, name: str):
    """Which of a file's tensors go into ``model``: ``(kept keys, stems to adapt to 1 channel,
    the model's tensors the file lacks but may)``; BackboneError when they do not fit."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    own = model.state_dict()
    kept = {k for k in shapes if k in own or not any(k == h or k.startswith(h + ".") for h in heads)}
    first_conv = cfg.get("first_conv")
    stems = {f"{c}.weight" for c in ((first_conv,) if isinstance(first_conv, str) else first_conv or ())}
    adapted = []
    for key, want in own.items():
        if key not in kept or shapes[key] == tuple(want.shape):
            continue
        have = shapes[key]
        if key in stems and len(have) == 4 and have[1] == 3 and want.shape[1] == 1:
            adapted.append(key)
            continue
        raise BackboneError(
            f"model.layers[0].weights: {path} does not fit {name} (another architecture?): first mismatch "
            f"{key!r} is {tuple(have)} in the file, {tuple(want.shape)} in the model"
        )
    missing = [k for k in own if k not in kept and not k.endswith("num_batches_tracked")]
    if missing:
        raise BackboneError(
            f"model.layers[0].weights: {path} lacks {len(missing)} of {name}'s {len(own)} tensors "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); is it a {name} state dict?"
        )
    return kept, adapted, missing


# ------------------------------------------------------------------ module


class BackboneModule(nn.Module):
    """A timm network: pixels after preprocess ``(N, C, H, W)`` -> ``(N, F)`` or ``(N, F, h, w)``.

    Attributes:
        model: the timm module (``num_classes=0``).
        output: ``pooled`` or ``features``.
        stages: number of stages; ``stage_of``: parameter name -> stage.
        trainable: true, false or N (see :meth:`set_trainable`).
        load_report: what :func:`load_weights` reported, or None.
    """

    def __init__(self, model: nn.Module, output: str, trainable: bool | int = True):
        super().__init__()
        self.model = model
        self.output = output
        self.stages, self.stage_of = stage_index(model)
        self.load_report: dict | None = None
        self.set_trainable(trainable)

    def set_trainable(self, trainable: bool | int) -> None:
        """Train everything (true), nothing (false) or the last N stages; batch norms of frozen parts stay in eval."""
        self.trainable = trainable
        first = 0 if trainable is True else self.stages if trainable is False else self.stages - int(trainable)
        for pname, p in self.model.named_parameters():
            p.requires_grad_(self.stage_of.get(pname, self.stages - 1) >= first)
        self.train(self.training)

    def frozen_norms(self) -> list[nn.Module]:
        """Batch norms whose parameters are all frozen (their running statistics must not move)."""
        out = []
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                ps = list(m.parameters(recurse=False))
                if (ps and not any(p.requires_grad for p in ps)) or (not ps and self.trainable is False):
                    out.append(m)
        return out

    def train(self, mode: bool = True) -> BackboneModule:
        """As ``nn.Module.train``, but a frozen backbone (and frozen stages' batch norms) stay in eval mode."""
        super().train(mode)
        if mode:
            if self.trainable is False:
                self.model.eval()  # Why: dropout / drop-path off too: a frozen backbone is a fixed feature extractor
            else:
                for m in self.frozen_norms():
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output == "features":
            return self.model.forward_features(x)  # (N, C, h, w)
        return self.model(x)  # (N, C)

    def extra_repr(self) -> str:
        return f"output={self.output}, trainable={self.trainable}, stages={self.stages}"


def build_backbone(layer: Backbone, in_shape: Shape) -> tuple[nn.Module, Shape]:
    """The timm network of ``layer`` with its weights, freezing and output (see the module doc).

    Registered as the builder of :class:`~convspec.specs.layers.Backbone` in ``compiler/layers.py``.
    """
    c = in_shape[0]
    load = _LOAD_WEIGHTS.get()
    model = create_timm(layer.name, c, pretrained=load and layer.weights == "pretrained")
    report = None
    if load and layer.weights_file is not None:
        report = load_weights(model, layer.weights_file, layer.name)
    if layer.output == "features":
        info = lookup(layer.name)
        heads = (
            list(info.head_modules)
            if info is not None
            else head_only_modules(model, c, (max(in_shape[1], 32), max(in_shape[2], 32)))
        )
        _drop(model, heads)
    module = BackboneModule(model, layer.output, layer.trainable)
    module.load_report = report
    if isinstance(layer.trainable, int) and not isinstance(layer.trainable, bool) and layer.trainable > module.stages:
        raise BackboneError(
            f"model.layers[0].trainable: {layer.name} has {module.stages} stages; got {layer.trainable}"
        )
    info = lookup(layer.name)
    if info is not None and info.reduction is not None:
        shape = info.out_shape(layer.output, in_shape[1], in_shape[2])
    else:
        was = module.training
        module.eval()
        with torch.no_grad():
            shape = tuple(module(torch.zeros(1, *in_shape)).shape[1:])
        module.train(was)
    return module, shape


def backbone_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The pretrained mean and std of a timm model (its ``pretrained_cfg``), from the table or timm."""
    info = lookup(name)
    if info is not None and info.mean and info.std:
        return info.mean, info.std
    timm = timm_module()
    cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name.split(".")[0]) else None
    if cfg is None or not getattr(cfg, "mean", None):
        raise BackboneError(f"mean: backbone: timm has no pretrained statistics for {name!r}")
    return tuple(cfg.mean), tuple(cfg.std)


def named_normalize(kind: str, spec, channels: int) -> tuple[list[float], list[float]]:
    """Mean and std of ``normalize: {mean: imagenet | backbone}`` at ``channels`` channels (1: the mean of 3)."""
    from convspec.specs.backbone_rules import first_backbone
    from convspec.specs.backbones import normalize_values, per_channel

    layer = first_backbone(spec)
    values = normalize_values(kind, layer.name if layer is not None else None, channels)
    if values is not None:
        return values
    if layer is None:
        raise BackboneError("mean: backbone needs a backbone layer as model.layers[0]")
    mean, std = backbone_stats(layer.name)
    return per_channel(mean, channels), per_channel(std, channels)
