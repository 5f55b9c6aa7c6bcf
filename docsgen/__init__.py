"""Build-time helpers of the documentation site: tutorial runs, generated reference, tables, equations.

``mkdocs.yml`` loads :mod:`docsgen.hooks`; ``tests/integration/test_docs.py`` runs the tutorial
steps of :mod:`docsgen.tutorials` (one source, ``docsgen/tutorials.yaml``, for the pages and the test).
"""
