"""Errors whose message is written for the person who caused them.

Like dask-gateway's ``PublicException``: anything derived from :class:`AidcError`
may be shown to a user as it is (CLI message, 4xx body); anything else is a bug,
logged with its traceback and never leaked.

:data:`STATUS_FOR_ERROR` is the one table between these classes and HTTP statuses: a
service answers an error with :func:`status_for` (``aidc.services.base``), and a client
turns a status back into the class with :func:`error_for_status` (``aidc.client``,
``aidc.hubapi``).
"""

from __future__ import annotations


class AidcError(Exception):
    """Base class for errors a user may see. ``exit_code`` is used by the CLI."""

    exit_code = 1


class UsageError(AidcError):
    """The request itself is malformed (bad name, unknown role, bad flag)."""

    exit_code = 2


def size_text(limit: int) -> str:
    """``16 MiB``, ``512 KiB``, ``100 bytes``: a body limit as messages state it."""
    if limit >= 2**20 and limit % 2**20 == 0:
        return f"{limit // 2**20} MiB"
    if limit >= 1024 and limit % 1024 == 0:
        return f"{limit // 1024} KiB"
    return f"{limit} bytes"


class TooLargeError(UsageError):
    """A body, file or upload over a size limit or quota (413); the message names the limit.

    Well-formed but refused, so the CLI exits 1 as for other refusals, not 2."""

    exit_code = 1


class NotFoundError(AidcError):
    """The named thing does not exist (or is not visible to the caller)."""


class ConflictError(AidcError):
    """The request clashes with existing state (duplicate user, account in use)."""


class AuthenticationError(AidcError):
    """The hub did not accept the caller's credentials."""


class PermissionDeniedError(AidcError):
    """The caller is known but lacks the role for this action."""


class PlatformError(AidcError):
    """The platform cannot do what was asked (not running, misconfigured)."""


#: the HTTP status of each kind of error a user may see (a subclass answers as its base)
STATUS_FOR_ERROR: dict[type[AidcError], int] = {
    TooLargeError: 413,  # before its base class: the first class an error is an instance of wins
    UsageError: 400,
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    NotFoundError: 404,
    ConflictError: 409,
}


def status_for(error: AidcError) -> int:
    """The status a service answers ``error`` with: its class's, else 400 (the request
    could not be done as asked)."""
    return next((status for cls, status in STATUS_FOR_ERROR.items() if isinstance(error, cls)), 400)


def error_for_status(status: int) -> type[AidcError]:
    """The error class of a refusal answered with ``status``; :class:`PlatformError` for a
    status no user-facing class has (5xx, a proxy's page)."""
    return next((cls for cls, s in STATUS_FOR_ERROR.items() if s == status), PlatformError)
