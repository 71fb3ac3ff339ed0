"""Streaming inference: step backends (ONNX, PyTorch), the detector, the long-stream benchmark.

``StreamingDetector(backend).feed(chunk) -> list[Event]`` is the whole API a
caller needs; ``open_backend(path)`` picks ONNX or PyTorch from the file.
The torch step module lives in ``kws.streaming.step_model`` and is not imported
here, so the ONNX path never loads torch.
"""

from kws.streaming.backends import OnnxStepBackend, StepBackend, TorchStepBackend, open_backend
from kws.streaming.engine import Event, StreamingDetector

__all__ = [
    "Event",
    "OnnxStepBackend",
    "StepBackend",
    "StreamingDetector",
    "TorchStepBackend",
    "open_backend",
]
