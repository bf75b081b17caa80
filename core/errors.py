"""The one error type for bad input data."""


class DataError(Exception):
    """Bad input data: names the file, what was found and what was expected."""

    def __init__(self, path, found: str | None = None, expected: str | None = None):
        if found is None:  # re-raised from a message alone (e.g. by a DataLoader worker)
            super().__init__(str(path))
            return
        self.path, self.found, self.expected = str(path), found, expected
        super().__init__(f"{self.path}: found {found}; expected {expected}")


def user_error(exc: BaseException) -> BaseException | None:
    """The DataError or ValueError behind ``exc`` (libraries such as MONAI wrap what a transform raised)."""
    while exc is not None and not isinstance(exc, (DataError, ValueError)):
        exc = exc.__cause__
    return exc


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` without a worker's traceback text around it."""
    text = str(exc).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split("Error: ", 1)[-1]
    return text
