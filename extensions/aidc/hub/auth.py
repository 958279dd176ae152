"""Authenticators: JupyterHub's own, wrapped with aidc's name mapping, throttle and audit.

No passwords are stored by aidc. When the platform runs as root, sign-in is JupyterHub's
:class:`~jupyterhub.auth.PAMAuthenticator` against the Unix account ``jupyter-<name>``
that ``aidc user add`` created. Without root (development), JupyterHub's
:class:`~jupyterhub.authenticators.shared.SharedPasswordAuthenticator` checks one shared
password kept 0600 in the data directory. Company sign-in (OIDC, LDAP) is configured in
``hub_config/`` with OAuthenticator / ldapauthenticator plus :class:`AuditedLoginMixin`.

Every attempt is recorded in the audit log and counted by the
:class:`~aidc.hub.throttle.LoginThrottle`. The page always says the same thing on
failure, so it does not reveal whether an account exists.
"""

from __future__ import annotations

import os

from jupyterhub.auth import PAMAuthenticator
from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from tornado import web
from traitlets import Unicode, default

from ..security import audit
from . import system_users
from .throttle import LoginThrottle


class AuditedLoginMixin:
    """Throttle and audit every sign-in, whatever checks the password."""

    _throttle: LoginThrottle | None = None

    @property
    def throttle(self) -> LoginThrottle:
        """Configured as ``c.LoginThrottle.*`` (created on first use)."""
        if self._throttle is None:
            self._throttle = LoginThrottle(parent=self)
        return self._throttle

    async def get_authenticated_user(self, handler, data):
        raw = (data or {}).get("username", "") or ""
        username = self.normalize_username(raw) if raw else raw
        ip = handler.request.remote_ip if handler is not None else None

        wait = self.throttle.retry_after(username, ip)
        if wait:
            audit.record(
                "auth", actor=username, action="login", target="hub",
                result="failure", reason="throttled", remote_ip=ip,
            )
            raise web.HTTPError(
                429,
                f"Too many failed sign-in attempts. Try again in {wait} seconds.",
            )

        user = await super().get_authenticated_user(handler, data)
        if user is None:
            self.throttle.failure(username, ip)
            audit.record(
                "auth", actor=username, action="login", target="hub",
                result="failure", reason="bad-credentials-or-not-allowed", remote_ip=ip,
            )
            return None
        self.throttle.success(user["name"], ip)
        audit.record(
            "auth", actor=user["name"], action="login", target="hub",
            result="success", remote_ip=ip,
        )
        return user


class SystemUserPAMAuthenticator(AuditedLoginMixin, PAMAuthenticator):
    """PAM sign-in where hub user ``alice`` is the Unix account ``<prefix>alice``.

    Only users that exist in the hub (added with ``aidc user add``) may sign in; the
    mapping means no hub name can ever authenticate as ``root`` or any account aidc did
    not create.
    """

    system_username_prefix = Unicode(
        system_users.DEFAULT_PREFIX,
        help="""Prefix of the Unix account that backs each hub user
        (hub user `alice` is Unix account `jupyter-alice`, as in The Littlest JupyterHub).""",
    ).tag(config=True)

    @default("open_sessions")
    def _no_pam_sessions(self):
        # PAM sessions need a login environment (systemd-logind) that containers lack;
        # JupyterHub recommends leaving them off unless needed.
        return False

    @default("allow_existing_users")
    def _allow_existing(self):
        return True

    def system_username(self, name: str) -> str:
        return system_users.system_name(name, self.system_username_prefix)

    def normalize_username(self, username):
        # the PAM round-trip would look up the hub name as a Unix name; names are
        # mapped instead, so only the generic normalisation applies
        return super(PAMAuthenticator, self).normalize_username(username)

    async def authenticate(self, handler, data):
        name = self.normalize_username(data.get("username", ""))
        if not self.validate_username(name) or not system_users.is_managed(
            self.system_username(name), os.environ.get("AIDC_DATA_DIR")
        ):
            return None
        mapped = dict(data, username=self.system_username(name))
        result = await super().authenticate(handler, mapped)
        return name if result else None

    def system_user_exists(self, user):
        return system_users.is_managed(
            self.system_username(user.name), os.environ.get("AIDC_DATA_DIR")
        )

    def add_system_user(self, user):
        system_users.create_account(
            self.system_username(user.name), os.environ.get("AIDC_DATA_DIR")
        )

    def check_allowed_groups(self, username, authentication=None):
        return False


class DevSharedPasswordAuthenticator(AuditedLoginMixin, SharedPasswordAuthenticator):
    """Development mode (not root): the platform's users sign in with one shared password.

    Everything runs under the account that started the platform, so this mode offers no
    isolation between users; ``aidc up`` says so loudly when it starts in it.
    """

    @default("allow_existing_users")
    def _allow_existing(self):
        return True
