"""The progress protocol long-running library steps report to (the CLI shows it as rich bars).

Library code never imports the CLI: a caller passes any object with ``start`` and ``advance``.
"""

from __future__ import annotations

from typing import Protocol


class ProgressHook(Protocol):
    """What a long step tells a progress display."""

    def start(self, description: str, total: int) -> None:
        """A new stage with ``total`` steps begins."""
        ...

    def advance(self, count: int) -> None:
        """``count`` more steps are done."""
        ...


class NoProgress:
    """A progress hook that shows nothing."""

    def start(self, description: str, total: int) -> None:
        """Ignore the stage."""

    def advance(self, count: int) -> None:
        """Ignore the step."""
