"""One exception family, so entry points can print a single line that says what is wrong and how to fix it."""


class DatamilError(Exception):
    """A user-facing error: the message names the problem and the fix, on one line."""


class DataError(DatamilError):
    """A dataset or episode is malformed (missing keys, NaN actions, wrong action dimension, not RLDS)."""


class UnknownNameError(DatamilError):
    """A name (task, dataset, registry entry) is not known; the message lists the valid ones."""

    def __init__(self, kind: str, name: str, valid: list[str], hint: str = "") -> None:
        shown = ", ".join(sorted(valid)[:60]) + (" ..." if len(valid) > 60 else "")
        super().__init__(f"unknown {kind} {name!r}; valid names: {shown}{'. ' + hint if hint else ''}")
        self.name = name
        self.valid = sorted(valid)
