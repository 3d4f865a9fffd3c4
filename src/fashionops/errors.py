"""Exceptions the command line turns into a one-line message and exit status 1."""


class FashionOpsError(Exception):
    """Base class: an expected failure with a message a user can act on."""


class DataError(FashionOpsError):
    """Bad input data; the message names the file/row/id and what is wrong."""


class ValidationFailed(FashionOpsError):
    """A critical Great Expectations expectation failed."""
