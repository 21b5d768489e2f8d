"""GPU checks (make gpu-check): the TensorRT level, the CUDA-only level, and the PyTorch reference they compare with."""
