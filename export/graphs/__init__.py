"""ONNX graphs: torch -> the three graphs and the global stages, the bundle writer, graph inspection and verification against PyTorch."""
