"""Datasets for GLSNet: label palettes, DeepGlobe and ISPRS Vaihingen folders, seeded synthetic scenes,
and the step that turns one labelled scene into a training sample.

Only ``samples`` imports torch; everything else is numpy (plus Pillow/tifffile for reading files).
"""
