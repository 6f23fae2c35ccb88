"""The rich Console fer-edge prints tables with: wide off a terminal."""
from __future__ import annotations

from rich.console import Console, ConsoleDimensions


class WideConsole(Console):
    """A rich Console that, writing to a pipe or a file with no COLUMNS set, lays out for 200 columns.

    Rich assumes 80 columns off a terminal and squeezes wide tables (``fer-edge predict``'s seven probability
    columns, the bench table, the benchmark scripts' tables) until columns are cut off, so ``... | tee log`` lost
    data.
    """

    OFF_TERMINAL_WIDTH = 200

    @property
    def size(self) -> ConsoleDimensions:
        dims = super().size
        if self._width is None and not self.is_terminal and "COLUMNS" not in self._environ:
            return ConsoleDimensions(max(dims.width, self.OFF_TERMINAL_WIDTH), dims.height)
        return dims
