"""The errors a user sees as one line: bad input data, and an optional package that is not installed."""


class DataError(Exception):
    """Bad input data: names the file, what was found and what was expected."""

    def __init__(self, path, found: str | None = None, expected: str | None = None):
        if found is None:  # re-raised from a message alone (e.g. by a DataLoader worker)
            super().__init__(str(path))
            return
        self.path, self.found, self.expected = str(path), found, expected
        super().__init__(f"{self.path}: found {found}; expected {expected}")


def user_error(exc: BaseException) -> BaseException | None:
    """The DataError, ValueError or MissingDependency behind ``exc`` (libraries such as MONAI wrap what a
    transform raised)."""
    while exc is not None and not isinstance(exc, (DataError, ValueError, MissingDependency)):
        exc = exc.__cause__
    return exc


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` without a worker's traceback text around it."""
    text = str(exc).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split("Error: ", 1)[-1]
    return text


class MissingDependency(ImportError):
    """An optional package a feature needs is not installed; the message says which extra brings it."""


def require(what: str, extra: str, *modules: str) -> None:
    """Raise ``MissingDependency`` with a one-line install hint when one of ``modules`` cannot be found,
    e.g. ``remote sensing needs rasterio: pip install "scimae[geo]"``."""
    import importlib.util
    import sys

    def found(name: str) -> bool:
        if name in sys.modules:
            return sys.modules[name] is not None
        return importlib.util.find_spec(name) is not None

    missing = [m for m in modules if not found(m)]
    if missing:
        raise MissingDependency(f"{what} needs {', '.join(missing)}: pip install \"scimae[{extra}]\"")
