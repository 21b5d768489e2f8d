"""Datasets for GLSNet: class lists and palettes (``datasets``), DeepGlobe and ISPRS Vaihingen folders,
mmsegmentation's converted Vaihingen, Potsdam and LoveDA folders, seeded synthetic scenes, and the step
that turns one labelled scene into a training sample.

Only ``samples`` imports torch; everything else is numpy (plus Pillow/tifffile for reading files).
"""
