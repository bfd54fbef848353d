"""The paper's optimiser: SGD with momentum, 10x learning rate on new layers, poly decay.

Parameter groups are formed by *module*, never by position: ``model.backbone`` (pre-trainable,
base LR) versus ``model.head`` and ``model.aux_head`` (newly initialised, ``head_lr_mult`` x the
base LR, 10 in the paper and in hszhao/semseg). Every parameter must fall in exactly one group.

The poly schedule sets, before optimizer step ``t`` (0-based), ``lr = base_lr * (1 - t /
max_iter) ** power`` on every group times its multiplier (hszhao/semseg's
``poly_learning_rate``, updated every iteration). :class:`PolySchedule` writes it as a function
of the *progress* ``p`` in [0, 1], which is ``t / max_iter`` for a fixed run. A time-budgeted run
may re-plan ``max_iter`` while it trains; re-planning keeps ``p`` continuous (it only changes
how fast ``p`` reaches 1), so the learning rate never jumps and still reaches 0 exactly at the
new end.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["param_groups", "build_optimizer", "PolySchedule", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the model).

    Only those wrappers are opened: other modules with a ``.module`` attribute (an exported
    TorchScript runtime keeps its scripted graph there) are models in their own right.
    """
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def param_groups(
    model: nn.Module, *, weight_decay: float = 1e-4, head_lr_mult: float = 10.0
) -> list[dict[str, Any]]:
    """Two parameter groups: ``backbone`` (multiplier 1) and ``head`` (``head_lr_mult``).

    Args:
        model: A PSPNet (or a wrapper around one) with ``backbone``, ``head`` and optionally
            ``aux_head`` sub-modules.
        weight_decay: Applied to every parameter, as in the authors' code.
        head_lr_mult: LR multiplier of ``model.head`` and ``model.aux_head``.

    Returns:
        Groups for ``torch.optim.SGD`` with the extra keys ``name`` and ``lr_mult``.

    Raises:
        ValueError: The model lacks a backbone or head, or has parameters outside them.
    """
    net = unwrap_model(model)
    for attr in ("backbone", "head"):
        if not isinstance(getattr(net, attr, None), nn.Module):
            raise ValueError(
                f"{type(net).__name__} has no `{attr}` module; the 10x learning rate on new "
                "layers needs a model with backbone / head / aux_head sub-modules"
            )
    new_modules: list[nn.Module] = [net.head]
    if isinstance(getattr(net, "aux_head", None), nn.Module):
        new_modules.append(net.aux_head)
    backbone = [p for p in net.backbone.parameters() if p.requires_grad]
    head = [p for m in new_modules for p in m.parameters() if p.requires_grad]
    ids_b, ids_h = {id(p) for p in backbone}, {id(p) for p in head}
    if ids_b & ids_h:
        raise ValueError("a parameter is shared between the backbone and the head")
    stray = [
        n for n, p in net.named_parameters()
        if p.requires_grad and id(p) not in ids_b and id(p) not in ids_h
    ]  # fmt: skip
    if stray:
        raise ValueError(
            f"parameters outside model.backbone / model.head / model.aux_head: {stray[:5]}; "
            "assign them to a group"
        )
    return [
        {"params": backbone, "name": "backbone", "lr_mult": 1.0, "weight_decay": weight_decay},
        {"params": head, "name": "head", "lr_mult": float(head_lr_mult),
         "weight_decay": weight_decay},
    ]  # fmt: skip


def build_optimizer(
    model: nn.Module,
    *,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    head_lr_mult: float = 10.0,
    nesterov: bool = False,
) -> torch.optim.SGD:
    """SGD over :func:`param_groups`; each group starts at ``lr * lr_mult``."""
    groups = param_groups(model, weight_decay=weight_decay, head_lr_mult=head_lr_mult)
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


class PolySchedule:
    """Poly learning rate ``base_lr * (1 - p) ** power`` with progress ``p`` from 0 to 1.

    For a fixed run ``p = t / max_iter`` (``t`` = optimizer steps done). :meth:`replan` at step
    ``t`` keeps ``p(t)`` and makes ``p`` grow linearly to 1 at the new ``max_iter``. Until the
    first plan (``max_iter`` None, used while a time budget is being measured) ``p`` stays 0.

    Args:
        base_lr: LR at progress 0 (per-group multipliers are applied by :meth:`apply`).
        max_iter: Total steps, or None when not planned yet.
        power: The exponent (0.9 in the paper).
    """

    def __init__(self, base_lr: float, max_iter: int | None, power: float = 0.9) -> None:
        if base_lr <= 0:
            raise ValueError(f"base_lr must be positive, got {base_lr}")
        if max_iter is not None and max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        self.base_lr = float(base_lr)
        self.power = float(power)
        self.max_iter = max_iter
        self.t0 = 0
        self.p0 = 0.0

    def progress(self, it: int) -> float:
        """Fraction of the schedule done before step ``it`` (clamped to [0, 1])."""
        if self.max_iter is None:
            return self.p0
        if self.max_iter <= self.t0:
            return 1.0
        p = self.p0 + (1.0 - self.p0) * (it - self.t0) / (self.max_iter - self.t0)
        return min(1.0, max(0.0, p))

    def lr(self, it: int) -> float:
        """Base learning rate for step ``it`` (0-based)."""
        return self.base_lr * (1.0 - self.progress(it)) ** self.power

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> float:
        """Set every group's ``lr`` to ``lr(it) * lr_mult``; returns the base LR."""
        lr = self.lr(it)
        for g in optimizer.param_groups:
            g["lr"] = lr * float(g.get("lr_mult", 1.0))
        return lr

    def replan(self, it: int, max_iter: int) -> None:
        """End the schedule at ``max_iter`` instead, continuing smoothly from step ``it``."""
        if max_iter < it:
            raise ValueError(f"cannot end the schedule at {max_iter}, before step {it}")
        self.p0 = self.progress(it)
        self.t0 = int(it)
        self.max_iter = int(max_iter)

    def state_dict(self) -> dict[str, Any]:
        return {
            "base_lr": self.base_lr,
            "power": self.power,
            "max_iter": -1 if self.max_iter is None else int(self.max_iter),
            "t0": int(self.t0),
            "p0": float(self.p0),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lr = float(state["base_lr"])
        self.power = float(state["power"])
        self.max_iter = None if int(state["max_iter"]) < 0 else int(state["max_iter"])
        self.t0 = int(state["t0"])
        self.p0 = float(state["p0"])

    def __repr__(self) -> str:
        return (
            f"PolySchedule(base_lr={self.base_lr}, max_iter={self.max_iter}, power={self.power}, "
            f"t0={self.t0}, p0={self.p0:.6f})"
        )
