"""The VeloxSeg network (spec §2), one module per block."""

from .config import VeloxSegConfig, WindowPair
from .decoders import gram_matrix
from .veloxseg import TrainOutputs, VeloxSeg

__all__ = ["VeloxSeg", "VeloxSegConfig", "WindowPair", "TrainOutputs", "gram_matrix"]
