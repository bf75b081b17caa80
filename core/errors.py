"""The one error type for bad input data."""


class DataError(Exception):
    """Bad input data: names the file, what was found and what was expected."""

    def __init__(self, path, found: str, expected: str):
        self.path, self.found, self.expected = str(path), found, expected
        super().__init__(f"{self.path}: found {found}; expected {expected}")
