"""Build side: torch -> three ONNX graphs and the bundle, verification, engine builds (CLI ``glsnet-export``)."""
