"""Lightning wiring of the method."""

from svi.lit.module import ERFTModule

__all__ = ["ERFTModule"]
