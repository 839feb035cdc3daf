"""Condition types, one file each: the I2V condition `y` and whatever extra inputs a type carries.

`Condition` (base.py) is the plug-in interface and the I2V builder every type shares; a new type is a
new file here plus a `conf/condition/*.yaml`.
"""

from svi.conditions.base import ClipGeometry, Condition
from svi.conditions.film import FilmCondition
from svi.conditions.shot import ShotCondition

__all__ = ["ClipGeometry", "Condition", "FilmCondition", "ShotCondition"]
