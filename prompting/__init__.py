"""Every way of pointing at a structure becomes one `PromptSet`."""
from .promptset import PromptSet, PromptSource, Point, Box

__all__ = ["PromptSet", "PromptSource", "Point", "Box"]
