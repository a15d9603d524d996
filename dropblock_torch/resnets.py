"""DropBlock into a torchvision or timm ResNet you already have, in one call.

``add_dropblock(model)`` places ``DropBlock2d`` layers as a preset of
``dropblock_common.presets`` says (the paper, Ghiasi, Lin, Le, 2018, arXiv:1810.12890: after
every convolution's batch norm of stages 3 and 4 and on their skip connections; or timm's
``drop_block_rate`` placement), without renaming a single weight: each layer is a new child of
its residual block, applied by a forward hook on the batch norm it follows (on the projection
of a skip connection, or as the block's ``downsample`` where the skip is the identity). So a
strict ``load_state_dict`` of pretrained weights saved without DropBlock still works, the
model's own checkpoints keep the schedule steps, eval output is bit-identical to the model
without DropBlock, and ``set_step`` reaches every inserted layer. A batch norm replaced later
(``nn.SyncBatchNorm.convert_sync_batchnorm`` for DDP, a frozen batch norm) passes the hook on
to its replacement at the block's next forward.

Adding DropBlock after a batch norm rather than after the ReLU that follows it gives the same
output: zeroing and a positive rescale commute with the ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

from dropblock_common import presets, validation
from dropblock_torch import bitmask, schedules
from dropblock_torch.modules import DropBlock2d, _DropBlockNd

_STAGES = {1: "layer1", 2: "layer2", 3: "layer3", 4: "layer4"}


class _ThenDropBlock:
    """A forward hook that passes a module's output through a DropBlock layer (picklable)."""

    def __init__(self, dropblock: DropBlock2d) -> None:
        self.dropblock = dropblock

    def __call__(self, module: nn.Module, inputs: tuple, output):
        return self.dropblock(output)


def _foreign_dropblock(module: nn.Module) -> bool:
    """A DropBlock of another library (timm's, built by ``drop_block_rate``; torchvision's)."""
    return "dropblock" in type(module).__name__.lower()


def _block_kind(block: nn.Module) -> str | None:
    """``"basic"`` or ``"bottleneck"`` for a torchvision or timm residual block, else None."""
    has = lambda *names: all(isinstance(getattr(block, name, None), nn.Module) for name in names)  # noqa: E731
    if not hasattr(block, "downsample") or not has("conv1", "bn1", "conv2", "bn2"):
        return None
    return "bottleneck" if has("conv3", "bn3") else "basic"


def _stages(model: nn.Module) -> dict[int, list[nn.Module]]:
    """The residual blocks of each stage, or a TypeError naming what is not a known ResNet."""
    stages = {}
    for stage, name in _STAGES.items():
        layer = getattr(model, name, None)
        blocks = list(layer) if isinstance(layer, nn.Sequential) else []
        if not blocks or any(_block_kind(block) is None for block in blocks):
            raise TypeError(
                "add_dropblock knows torchvision and timm ResNets (stages layer1 to layer4 of BasicBlock or "
                f"Bottleneck blocks with conv1/bn1/conv2/bn2 and a downsample), got {type(model).__name__} "
                f"without such a {name}. Place DropBlock2d layers by hand for other models."
            )
        stages[stage] = blocks
    return stages


def _after_batch_norms(block: nn.Module, preset: str) -> list[str]:
    """The batch norms of a block that DropBlock follows: every one (the paper) or the 3x3 conv's (timm)."""
    if preset == "timm":
        return ["bn2"] if _block_kind(block) == "bottleneck" else ["bn1"]
    return ["bn1", "bn2", "bn3"] if _block_kind(block) == "bottleneck" else ["bn1", "bn2"]


class _FollowReplacedModules:
    """A forward pre-hook of a residual block: moves each ``_ThenDropBlock`` onto a module that replaced its own.

    Converting a model's batch norms (``nn.SyncBatchNorm.convert_sync_batchnorm``, frozen or
    fused batch norms) builds new modules without the old ones' hooks: the inserted DropBlock
    layers would silently stop running. Before each forward of the block, a child that is no
    longer the module the hook was registered on gets the hook (picklable, as the hooks are).
    """

    def __init__(self, hooked: dict[str, tuple[nn.Module, _ThenDropBlock]]) -> None:
        self.hooked = hooked

    def __call__(self, block: nn.Module, inputs: tuple) -> None:
        if not bitmask.tracing() and any(isinstance(value, torch.fx.Proxy) for value in inputs):
            raise RuntimeError(
                "torch.fx records a batch norm as one call without its forward hooks, so the DropBlock "
                "layers add_dropblock applied there would be missing from the traced graph. Trace the "
                "model without them, or place DropBlock2d layers as modules of your own."
            )
        for name, (module, hook) in self.hooked.items():
            current = getattr(block, name)
            if current is module:
                continue
            # A copy of the old module carries a copy of the hook, with a copy of the layer that
            # the model does not hold: dropped. Where a fuser moved the hook onto the fused
            # convolution (the batch norm becoming an Identity), it runs there already.
            for key, other in list(current._forward_hooks.items()):
                if isinstance(other, _ThenDropBlock) and other is not hook:
                    del current._forward_hooks[key]
            if all(other is not hook for child in block.modules() for other in child._forward_hooks.values()):
                current.register_forward_hook(hook)
            self.hooked[name] = current, hook


def _insert(block: nn.Module, name: str, make_layer) -> tuple[nn.Module, _ThenDropBlock]:
    """A new DropBlock child ``dropblock_<name>`` applied to the output of ``block.<name>``; the module and its hook."""
    layer = make_layer()
    block.add_module(f"dropblock_{name}", layer)
    module, hook = getattr(block, name), _ThenDropBlock(layer)
    module.register_forward_hook(hook)
    return module, hook


def add_dropblock(
    model: nn.Module,
    *,
    preset: str = "paper",
    drop_prob: float = 0.1,
    total_steps: int | None = None,
    block_size: int | None = None,
    auto_step: bool = True,
) -> nn.Module:
    """Insert DropBlock into a torchvision or timm ResNet in place, as ``preset`` places it.

    Args:
      model: a torchvision ``ResNet`` (``resnet18`` to ``resnet152``, ``resnext``,
        ``wide_resnet``) or a timm ResNet (``timm.create_model("resnet50")``, ...).
      preset: ``"paper"`` (stages 3 and 4: after every convolution's batch norm and on the skip
        connections, block 7, stage 3 at a quarter of the rate) or ``"timm"`` (timm's
        ``drop_block_rate``: after the 3x3 convolution's batch norm, blocks 5 and 3).
      drop_prob: the final ``drop_prob`` of stage 4 (stage 3 gets the preset's share).
      total_steps: if given, ``drop_prob`` ramps from 0 over this many steps
        (``schedules.ramp``); each layer's step then advances once per training call (see
        ``set_step`` for the optimizer's step instead).
      block_size: replaces the preset's block sizes (small inputs need small blocks).
      auto_step: with ``total_steps``, False keeps each layer's step where ``set_step`` puts it
        (gradient accumulation: one step per optimizer step, not per forward call).

    Returns:
      ``model`` itself, with the new layers as children of its residual blocks.

    Raises:
      TypeError: for a model that is not a known ResNet.
      ValueError: for a bad argument, or a model that already has DropBlock.

    Examples:
      >>> import torch
      >>> from torch import nn
      >>> from dropblock_torch import set_step
      >>> model = nn.Sequential()  # stands in for torchvision.models.resnet18()
      >>> add_dropblock(model)
      Traceback (most recent call last):
      ...
      TypeError: add_dropblock knows torchvision and timm ResNets ...
    """
    placement = presets.resnet_placement(preset, block_size)
    validation.check_flag(auto_step, "auto_step")
    drop_prob = validation.drop_prob_value(drop_prob)
    stages = _stages(model)
    if any(isinstance(module, _DropBlockNd) or _foreign_dropblock(module) for module in model.modules()):
        raise ValueError(
            f"model already has DropBlock layers; add_dropblock adds them once, got {type(model).__name__}."
        )
    rates = {stage: drop_prob * place.rate_scale for stage, place in placement.items()}
    if total_steps is not None:
        rates = {stage: schedules.ramp(rate, total_steps) for stage, rate in rates.items()}
    for stage, place in placement.items():

        def make_layer(rate=rates[stage], place=place):
            return DropBlock2d(rate, place.block_size, auto_step=auto_step)

        for block in stages[stage]:
            hooked = {name: _insert(block, name, make_layer) for name in _after_batch_norms(block, preset)}
            if place.on_skip and block.downsample is None:
                block.downsample = make_layer()  # the identity skip, dropped
            elif place.on_skip:
                hooked["downsample"] = _insert(block, "downsample", make_layer)
            block.register_forward_pre_hook(_FollowReplacedModules(hooked))
    return model
