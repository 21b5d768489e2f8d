"""Batch on Ray: the dispatcher, the worker actor, inputs, resume, the report and the cluster connection."""
