"""A line out as one ONNX or OpenVINO graph with its manifest, and the runtimes that run it.

:mod:`~normadd.export.graph` (the line as one ``nn.Module``), :mod:`~normadd.export.manifest`
(``manifest.json``), :mod:`~normadd.export.exporter` (``normadd export``) and
:mod:`~normadd.export.runtime` (run an export with onnxruntime or OpenVINO). Import the modules
themselves: this package imports nothing, so the runtimes load without the exporter's packages.
"""
