"""Errors of the registry: each names what was asked for and what exists, in one line."""

from __future__ import annotations

from normadd.errors import NormaddError


class RegistryError(NormaddError):
    """A registry operation that cannot be done as asked."""


class LineNotFoundError(RegistryError, LookupError):
    """A product line name that is not in the registry."""


class LineExistsError(RegistryError):
    """A product line created twice."""


class NormalityNotFoundError(RegistryError, LookupError):
    """A normality name that is not active on the line."""


class DuplicateNormalityError(RegistryError):
    """A normality added twice to the same line."""


class SchemaVersionError(RegistryError):
    """A database written by a newer normadd than this one."""
