"""Runnable examples: a ResNet for 32x32 images with scheduled DropBlock, in Flax and in torch."""
