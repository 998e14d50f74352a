"""Exceptions that separate the user's bad input from the program's own faults."""

from __future__ import annotations


class CustsegError(Exception):
    """Base class of every error custseg raises on purpose."""


class InputError(CustsegError, ValueError):
    """Bad input or usage: a file, a column, a value or an option the user can fix.

    The message is one line that names what is wrong and what to do; the CLI exits 2
    with it and Airflow fails the task without retries.
    """


class UntrustedModelError(InputError):
    """A model file holds types outside the trusted list, so it is not loaded."""
