"""User-facing errors: one line that names the problem and what to do about it."""


class SriError(Exception):
    """An error caused by the user's input or environment, shown as one line by the CLI.

    The message must say what is wrong *and* what to do, e.g.
    ``model 'foo' is unknown; use a short name from `sri assets list`, a local folder or a Hub id``.
    """


class IncompatibleError(SriError):
    """Two artefacts (traces, anchors, signals, guards) were computed under different keys."""
