"""TensorRT engines behind the Backend interface (TensorRT 10.x and 11.x, Jetson and DLA).

api: the one place that knows the TensorRT version's differences; engine_check: which engines may
run here; buffers: buffer sizes from the manifest; runner: TensorRTBackend; pipeline: the three
engines and the stream scheduler put together. Importing this package imports no TensorRT.
"""
