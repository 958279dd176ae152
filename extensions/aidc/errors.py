"""Errors whose message is written for the person who caused them.

Like dask-gateway's ``PublicException``: anything derived from :class:`AidcError`
may be shown to a user as it is (CLI message, 4xx body); anything else is a bug,
logged with its traceback and never leaked.
"""


class AidcError(Exception):
    """Base class for errors a user may see. ``exit_code`` is used by the CLI."""

    exit_code = 1


class UsageError(AidcError):
    """The request itself is malformed (bad name, unknown role, bad flag)."""

    exit_code = 2


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
