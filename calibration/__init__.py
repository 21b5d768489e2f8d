"""Precision: calibration tiles, FP16 conversion, INT8 Q/DQ, TensorRT 10 calibration cache, accuracy gates."""
