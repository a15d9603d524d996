"""Where to put DropBlock in a ResNet: the paper's placement and timm's, as data.

A ResNet has four stages (the paper's groups conv2_x to conv5_x, here 1 to 4). Both the
paper (Ghiasi, Lin, Le, 2018, arXiv:1810.12890) and timm apply DropBlock to the last two
stages only, with a smaller rate in stage 3.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Placement:
    """DropBlock in one ResNet stage.

    Attributes:
      stage: the ResNet stage, 1 to 4.
      block_size: the block size used there.
      rate_scale: that stage's ``drop_prob`` is the model's ``drop_prob`` times this.
      on_skip: also apply DropBlock to the stage's skip connections.
    """

    stage: int
    block_size: int
    rate_scale: float
    on_skip: bool


PRESETS: dict[str, tuple[Placement, ...]] = {
    # The paper: groups 3 and 4, block 7, after the convolutions and on the skip connection;
    # group 3 at a quarter of the rate.
    "paper": (Placement(3, 7, 0.25, True), Placement(4, 7, 1.0, True)),
    # timm's ResNet drop_block_rate: layers 3 and 4, blocks 5 and 3, rate scales 0.25 and 1.
    "timm": (Placement(3, 5, 0.25, False), Placement(4, 3, 1.0, False)),
}


def resnet_placement(preset: str = "paper", block_size: int | None = None) -> dict[int, Placement]:
    """The DropBlock placement of a preset, keyed by ResNet stage.

    Args:
      preset: ``"paper"`` or ``"timm"``.
      block_size: if given, replaces the preset's block sizes (small inputs need small blocks).

    Returns:
      ``{stage: Placement}`` for the stages that use DropBlock; other stages use none.

    Raises:
      ValueError: for an unknown preset or a block size below 1.

    Examples:
      >>> placement = resnet_placement("paper")
      >>> sorted(placement), placement[3].rate_scale, placement[4].block_size
      ([3, 4], 0.25, 7)
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(map(repr, PRESETS))}, got {preset=!r}.")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive int or None, got {block_size=!r}.")
    return {
        p.stage: p if block_size is None else dataclasses.replace(p, block_size=block_size) for p in PRESETS[preset]
    }
