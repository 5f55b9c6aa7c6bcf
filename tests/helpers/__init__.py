"""Helpers shared by tests and by the reference-fixture script."""
