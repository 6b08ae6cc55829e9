"""The one base class of errors a user can act on, and the engine's logging set-up.

Every error the engine raises for something the user can fix (a bad file, folder, setting or
model) derives from :class:`UserError`; its message names the thing and what to do, and the CLI
and the pages show it as it is. Anything else that escapes is a bug: it is logged with its
traceback and shown as an internal error with what to report. ``UserError`` is deliberately no
``ValueError``: a ``ValueError`` from a programming mistake must not pass for "your file is bad".
"""

from __future__ import annotations

import logging
import sys

#: Where a user reports an internal error.
REPORT_TO = "the U-Net Studio developers (with the lines above and the command or page that failed)"

_FORMAT = "%(levelname)s %(name)s: %(message)s"


class UserError(Exception):
    """An error the user can act on; the message says what and how."""


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests and Streamlit replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(verbose: bool = False) -> None:
    """Send the engine's log records (the ``unet_core`` logger) to stderr, once per process.

    ``verbose``: INFO and above (what the engine is doing: tile measurement, scale search,
    GPU fallback); otherwise WARNING and above. Calling it again only changes the level.
    """
    logger = logging.getLogger("unet_core")
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    if not any(getattr(h, "_unet_studio", False) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._unet_studio = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False  # one line per record, not a second through the root logger
