"""VeloxSeg training side: the PyTorch network, SDKT training, evaluation and ONNX export."""

__version__ = "0.1.0"
