"""Fine-tuning controls: per-layer learning-rate multipliers and frozen layers (``training.freeze``).

``model.body`` has one child per entry of ``model.layers``, so a spec layer's parameters are
those of ``body[i]``; nested layers (``repeat``, ``residual``) map onto their sub-modules, and a
nested ``lr_mult`` multiplies its parent's.

How the optimizer sees frozen layers (the choice, documented in the README): every trainable
parameter is in the optimizer from the start, grouped by learning-rate multiplier (one group, the
old behaviour, when no layer sets ``lr_mult``). A frozen layer's parameters have
``requires_grad = False`` until ``unfreeze_epoch``, so they get no gradient; SGD, Adam and AdamW
skip a parameter whose gradient is None, so it gets no update, no weight decay and no moment
estimates while frozen, and its Adam state starts fresh (step 0, bias-corrected) when it thaws.
Their batch-norm modules are in eval mode in frozen epochs, so the running statistics stay too.
Which epochs are frozen is a function of the epoch number, so a resumed run re-derives it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from convspec.specs.rules import frozen_layers


def _walk(layers, modules, mult: float, out: dict[int, float]) -> None:
    """Record ``id(param) -> multiplier`` for spec ``layers`` built as ``modules`` (in order)."""
    for layer, mod in zip(layers, modules):
        m = mult * (layer.lr_mult if getattr(layer, "lr_mult", None) is not None else 1.0)
        for p in mod.parameters():
            out[id(p)] = m
        if layer.type == "repeat":
            for copy in mod:  # one Sequential per copy, one child per entry of layer.layers
                _walk(layer.layers, copy, m, out)
        elif layer.type == "residual":
            _walk(layer.layers, mod.body, m, out)  # the shortcut keeps the residual's multiplier


def lr_multipliers(spec, model: nn.Module) -> dict[int, float]:
    """``id(parameter) -> lr_mult`` for every parameter of ``model`` (head and others: 1)."""
    out = {id(p): 1.0 for p in model.parameters()}
    _walk(spec.model.layers, model.body, 1.0, out)
    return out


def param_groups(spec, model: nn.Module, lr: float) -> list[dict]:
    """The model's trainable parameters grouped by multiplier, in parameter order: ``lr = base * lr_mult``."""
    mults = lr_multipliers(spec, model)
    groups: dict[float, list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault(mults[id(p)], []).append(p)
    return [{"params": ps, "lr": lr * m, "lr_mult": m} for m, ps in groups.items()]


@dataclass
class Freeze:
    """The frozen spec layers of a run and when they thaw (``unfreeze_epoch``; None: never)."""

    layers: list[int]
    unfreeze_epoch: int | None
    modules: list[nn.Module]
    trainable: dict[int, bool]  # id(param) -> requires_grad as built (a backbone may freeze its own)
    rewrap: Callable[[], None] | None = None  # re-wraps the net (DDP) after requires_grad changes
    frozen: bool = False  # the phase the net was wrapped in (DDP records requires_grad when built)

    @classmethod
    def from_spec(cls, spec, model: nn.Module) -> Freeze | None:
        layers = frozen_layers(spec)
        if not layers:
            return None
        trainable = {id(p): p.requires_grad for p in model.parameters()}
        mods = [model.body[i] for i in layers]
        return cls(layers, spec.training.unfreeze_epoch, mods, trainable)

    def is_frozen(self, epoch: int) -> bool:
        return self.unfreeze_epoch is None or epoch < self.unfreeze_epoch

    def apply(self, epoch: int) -> None:
        """Set requires_grad and batch-norm modes for ``epoch`` (1-based); call after ``net.train()``."""
        frozen = self.is_frozen(epoch)
        for mod in self.modules:
            for p in mod.parameters():
                p.requires_grad_(self.trainable[id(p)] and not frozen)
            if frozen:
                for m in mod.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()  # Why: train mode would update running_mean / running_var
        if frozen != self.frozen:
            if self.rewrap is not None:
                self.rewrap()
            self.frozen = frozen

    def describe(self) -> str:
        when = f"until epoch {self.unfreeze_epoch}" if self.unfreeze_epoch is not None else "for the whole run"
        return f"frozen: model.layers {self.layers} {when}"
