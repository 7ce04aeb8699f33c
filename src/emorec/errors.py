"""Errors a user can act on. Stage scripts print them as one line instead of a traceback."""


class EmorecError(Exception):
    """Base class for problems caused by input or configuration, not by a bug."""


class ParamsError(EmorecError):
    """A value in params.yaml is missing or invalid; the message names the key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"params.yaml: '{key}' {problem}")


class DataError(EmorecError):
    """Input data cannot be used (missing folder, unreadable CSV, empty class, ...)."""


class ImageError(EmorecError):
    """One image cannot be used. ``reason`` is a short machine-readable code used in reports."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(f"{reason}: {detail}")
