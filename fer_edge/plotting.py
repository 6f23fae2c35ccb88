"""matplotlib without pyplot: every fer-edge plot is a :class:`matplotlib.figure.Figure` on its own Agg canvas.

pyplot would select a process-wide backend (``matplotlib.use``): drawing a plot changed a notebook's backend, and a
``MPLBACKEND`` naming a backend this environment lacks (a notebook kernel's ``module://matplotlib_inline...``
outside Jupyter) made ``import matplotlib`` raise, so a finished evaluation or training epoch ended in a traceback.
Here ``MPLBACKEND`` is set aside while matplotlib is first imported (no fer-edge plot uses a backend), and anything
that still keeps a plot from being drawn is a :class:`~fer_edge.errors.PlotError`, which callers report as a warning
(:func:`draw_or_warn`) after keeping their results.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from fer_edge.errors import PlotError


def _matplotlib():
    if "matplotlib" not in sys.modules:
        backend = os.environ.pop("MPLBACKEND", None)
        try:
            import matplotlib  # noqa: F401 - imported here with MPLBACKEND set aside
        except Exception as e:  # noqa: BLE001 - a broken install raises anything
            raise PlotError(f"matplotlib cannot be imported ({type(e).__name__}: {e})") from e
        finally:
            if backend is not None:
                os.environ["MPLBACKEND"] = backend
        if backend is not None:  # the user's backend for their own pyplot figures, where matplotlib takes it
            try:
                sys.modules["matplotlib"].rcParams["backend"] = backend
            except Exception:  # noqa: BLE001 - one this environment lacks: matplotlib picks its own when asked
                pass
    try:
        import matplotlib
    except Exception as e:  # noqa: BLE001 - e.g. a first import that failed before and left the module unusable
        raise PlotError(f"matplotlib cannot be imported ({type(e).__name__}: {e})") from e
    return matplotlib


def subplots(nrows: int = 1, ncols: int = 1, **figure_kw):
    """``(figure, axes)`` like ``pyplot.subplots``, on an Agg canvas; the caller's backend is left alone."""
    _matplotlib()
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except Exception as e:  # noqa: BLE001 - a broken install (a missing fontTools, say) raises anything
        raise PlotError(f"matplotlib cannot draw here ({type(e).__name__}: {e})") from e

    fig = Figure(**figure_kw)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols)


def colormap(name: str):
    """A registered colormap by name (``tab10``, ``Blues``)."""
    return _matplotlib().colormaps[name]


def save_png(fig, path: str | Path, dpi: float | None = None) -> Path:
    """Write ``fig`` as PNG at ``path`` atomically (a temporary file beside it, then a rename)."""
    from fer_edge.utils import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **({"dpi": dpi} if dpi else {}))
    return Path(path)


def wrap_title(title: str, width: int) -> str:
    """``title`` in lines of at most ``width`` characters (its own line breaks kept): a title longer than its figure
    is cut at the figure's edges."""
    import textwrap

    return "\n".join(textwrap.fill(line, width, break_long_words=True, break_on_hyphens=False)
                     for line in title.splitlines() or [""])


def warn_stderr(text: str) -> None:
    """``warning: text`` on stderr (how the CLI words a warning)."""
    print(f"warning: {text}", file=sys.stderr)


def draw_or_warn(draw: Callable[[], Path], path: str | Path,
                 warn: Callable[[str], None] | None = None) -> Path | None:
    """``draw()`` (which writes ``path``), or, when it fails, ``warn`` (default :func:`warn_stderr`) with why and no
    earlier file at ``path`` left
    to pass for this run's plot. The caller's results are already kept: a plot is never why a command fails, so any
    error is a warning (it names the error's type: a fer-edge bug shows as one), except an AssertionError (fer-edge
    asserts nothing: that is a test's check, which must fail the test)."""
    try:
        return draw()
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001 - see above
        path = Path(path)
        stale = ""
        if path.is_file() and not path.is_symlink():
            try:
                path.unlink()
                stale = f"; the earlier {path.name} was removed"
            except OSError:
                stale = f"; the earlier {path.name} is still there (not this run's)"
        why = " ".join(f"{type(e).__name__}: {e}".split()) if not isinstance(e, PlotError) else str(e)
        (warn or warn_stderr)(f"plot {path} not drawn ({why}){stale}")
        return None
