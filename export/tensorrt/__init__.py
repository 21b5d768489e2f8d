"""TensorRT: engine builds (TensorRT 10 and 11, DLA) and the check of ONNX graphs against what TensorRT accepts."""
