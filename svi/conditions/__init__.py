"""Condition types: how a clip's `y` and extra inputs are built, for training and generation alike."""

from svi.conditions.i2v import I2VCondition

__all__ = ["I2VCondition"]
