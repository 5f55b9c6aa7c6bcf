"""Batch scoring beyond one process: the image passes of ``inspect`` and ``evaluate`` on a Ray cluster."""
