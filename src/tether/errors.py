"""Errors a user can cause, each with a message that says what to do.

The CLI prints these without a traceback and exits with :attr:`TetherError.exit_code`:
``2`` for bad usage or bad input, ``1`` for a refusal or something not ready.
"""

from __future__ import annotations


class TetherError(Exception):
    """Base of every error Tether reports to a user (exit code 1: refused / not ready)."""

    exit_code = 1


class BadInput(TetherError):
    """The user gave something malformed or invalid (exit code 2)."""

    exit_code = 2


class Refused(TetherError):
    """The request was understood but is not allowed now (exit code 1)."""

    exit_code = 1


class NotReady(TetherError):
    """A prerequisite is missing: a daemon, a file, an initialised data directory."""

    exit_code = 1


class ConfigError(BadInput):
    """A configuration file is missing, unreadable or has a bad value."""
