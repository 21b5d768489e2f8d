"""Where training and evaluation compute: device choice, mixed precision, and device memory figures."""
