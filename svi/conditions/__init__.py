"""Condition types, one file each: the I2V condition `y` and whatever extra inputs a type carries.

`Condition` (base.py) is the plug-in interface and the I2V builder every type shares; a new type is a
new file here plus a `conf/condition/*.yaml`. Shot and Film use the I2V condition alone; Talk adds speech
(MultiTalk's audio adapters) and Dance a skeleton video (a pose encoder on the patch embeddings).
"""

from svi.conditions.base import ClipGeometry, ClipSpan, Condition
from svi.conditions.dance import DanceCondition
from svi.conditions.film import FilmCondition
from svi.conditions.shot import ShotCondition
from svi.conditions.talk import TalkCondition

__all__ = ["ClipGeometry", "ClipSpan", "Condition", "DanceCondition", "FilmCondition", "ShotCondition", "TalkCondition"]
