"""Torch-free GLSNet inference: bundle contract, patch geometry, backends, scheduling, stitching.

Importing this package imports nothing heavy; backends load their engines on first use.
"""

__version__ = "0.1.0"
