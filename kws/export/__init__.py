"""Export: a trained spotter to ONNX, as a clip model or a streaming step model.

``kws.export.onnx_export.export_spotter`` writes NAME.onnx and its sidecar
NAME.json after checking the file in onnxruntime (``kws.export.verify``);
``ExportSpec.load`` reads the sidecar back, for any runtime that drives the file.
This package imports only the sidecar code eagerly, so reading a sidecar needs no torch.
"""

from kws.export.sidecar import ExportSpec, SidecarError, StateSpec

__all__ = ["ExportSpec", "SidecarError", "StateSpec"]
