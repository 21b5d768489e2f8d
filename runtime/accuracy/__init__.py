"""Accuracy in numpy: confusion-matrix metrics and output comparison reports (export verify, precision gates, bench)."""
