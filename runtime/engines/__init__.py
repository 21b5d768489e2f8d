"""Engines: the pipeline interface and its two implementations (ONNX Runtime with a provider, TensorRT engines on CUDA streams), and the check of a graph set against the manifest."""
