"""The registry: product lines, their active normalities and an append-only audit log (SQLite).

Import :class:`Registry` and the records from ``normadd.registry.store`` (torch-free, used by
tools that only read or write the log) and :class:`LineModel` from ``normadd.registry.line_model``.
"""
