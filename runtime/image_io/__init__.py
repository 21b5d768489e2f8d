"""Image IO: readers (windowed TIFF, PNG/JPEG), atomic output writers, input ranges and normalisation."""
