"""Authenticators: JupyterHub's own and its well-kept plugins, wrapped for aidc.

No passwords are stored by aidc. The wrappers add three things to whichever
authenticator checks the credentials:

* :class:`AuditedLoginMixin`: every attempt is throttled (:mod:`aidc.hub.throttle`) and
  recorded in the audit log; the page says the same thing on every failure, so it does
  not reveal whether an account exists;
* :class:`aidc.hub.removal.RemovedUserMixin`: a user removed through the hub takes their
  secrets for jobs with them;
* :class:`SystemAccountsMixin`: as root, hub user ``alice`` is backed by the Unix account
  ``jupyter-alice`` of *this* platform, created when the user is added;
* the concrete classes, one per way of signing in:

  - :class:`SystemUserPAMAuthenticator` (the default as root): PAM against the Unix
    account that ``aidc user add`` created;
  - :class:`DevSharedPasswordAuthenticator` (the default without root): one shared
    password kept 0600 in the data directory; no isolation, development only;
  - :class:`CompanyOIDCAuthenticator`: OpenID Connect through OAuthenticator's
    GenericOAuthenticator (``hub_config/auth_oidc.py``);
  - :class:`CompanyLDAPAuthenticator`: LDAP through ldapauthenticator
    (``hub_config/auth_ldap.py``).
"""

from __future__ import annotations

import asyncio

from jupyterhub.auth import PAMAuthenticator
from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from ldapauthenticator import LDAPAuthenticator
from oauthenticator.generic import GenericOAuthenticator
from tornado import web
import requests
from jupyterhub.utils import maybe_future
from traitlets import Dict, Unicode, default
from traitlets.config import LoggingConfigurable

from ..security import audit
from .. import accounts, roles
from ..paths import platform_data_dir
from .removal import RemovedUserMixin
from .throttle import LoginThrottle


class AuditedLoginMixin:
    """Throttle and audit every sign-in, whatever checks the credentials."""

    _throttle: LoginThrottle | None = None

    @property
    def throttle(self) -> LoginThrottle:
        """Configured as ``c.LoginThrottle.*`` (created on first use)."""
        if self._throttle is None:
            self._throttle = LoginThrottle(parent=self)
        return self._throttle

    async def authenticate(self, handler, data=None):
        model = await maybe_future(super().authenticate(handler, data))
        if handler is not None and isinstance(model, dict):
            # remembered so that a refusal after this point (not allowed, no role)
            # is recorded under the name the identity provider asserted
            handler._aidc_attempted_name = model.get("name") or ""
        return model

    def _attempted(self, handler, username: str) -> str:
        return username or getattr(handler, "_aidc_attempted_name", "")

    async def get_authenticated_user(self, handler, data):
        raw = (data or {}).get("username", "") or ""
        username = self.normalize_username(raw) if raw else ""
        ip = handler.request.remote_ip if handler is not None else None

        wait = self.throttle.retry_after(username, ip)
        if wait:
            audit.record(
                "auth", actor=username, action="login", target="hub",
                result="failure", reason="throttled", remote_ip=ip,
            )
            raise web.HTTPError(
                429, f"Too many failed sign-in attempts. Try again in {wait} seconds."
            )

        try:
            user = await super().get_authenticated_user(handler, data)
        except web.HTTPError as e:
            # e.g. OAuth: the identity provider refused, or the user is not allowed
            self.throttle.failure(username, ip)
            audit.record(
                "auth", actor=self._attempted(handler, username), action="login",
                target="hub", result="failure", reason=f"refused ({e.status_code})",
                remote_ip=ip,
            )
            raise
        if user is None:
            self.throttle.failure(username, ip)
            audit.record(
                "auth", actor=self._attempted(handler, username), action="login",
                target="hub", result="failure", reason="bad-credentials-or-not-allowed",
                remote_ip=ip,
            )
            return None
        self.throttle.success(user["name"], ip)
        # a user the hub creates now is created by this sign-in (a company directory's
        # first sign-in), not by an administrator: DefaultRoleMixin leaves it without a role
        signing_in = self.__dict__.setdefault("_aidc_signing_in", set())
        signing_in.add(user["name"])
        asyncio.get_running_loop().call_later(60, signing_in.discard, user["name"])
        audit.record(
            "auth", actor=user["name"], action="login", target="hub",
            result="success", remote_ip=ip,
        )
        return user


class DefaultRoleMixin(LoggingConfigurable):
    """Give a user an administrator adds outside ``aidc user`` the default aidc role.

    JupyterHub calls :meth:`Authenticator.add_user` for a user created through the REST
    API (``POST /hub/api/users``, which the admin page's *Add Users* uses), at a first
    sign-in, and for every user in its database when it starts; a user that reaches it
    with no aidc role group joins the group of :attr:`default_role`, recorded in the
    audit log like ``aidc user add``; ``aidc user add`` then sets the role it was given.
    Not given: to the users the hub already has when it starts, and to a user created by
    a first sign-in (company directory), who waits for ``aidc user set-role``.
    """

    default_role = Unicode(
        roles.SCIENTIST,
        help="""aidc role (admin, scientist or viewer) given to a user created by an
        administrator outside `aidc user`: on the admin page (Add Users) or through
        `POST /hub/api/users`. Empty: such users get no role (and can do nothing until
        `aidc user set-role`). Users created by a first company sign-in get no role either
        way; with `role_groups` (OIDC) the provider's groups decide.""",
    ).tag(config=True)

    async def add_user(self, user):
        result = super().add_user(user)
        if hasattr(result, "__await__"):
            await result
        self._give_default_role(user)

    def _give_default_role(self, user) -> None:
        role = self.default_role
        if not role or getattr(self, "role_groups", None):
            return
        if getattr(self.parent, "http_server", None) is None:
            return  # the hub starting: it calls add_user for every user it already has
        if user.name in self.__dict__.get("_aidc_signing_in", ()):
            return  # created by a first sign-in: roles then come from `aidc user set-role`
        if roles.role_of((g.name for g in user.groups), bool(user.admin)):
            return
        roles.check_role(role)
        from jupyterhub import orm
        from sqlalchemy.orm import object_session

        orm_user = getattr(user, "orm_user", user)
        db = object_session(orm_user)
        if db is None:
            self.log.warning("User %s has no aidc role and could not be given one", user.name)
            return
        group = orm.Group.find(db, role)
        if group is None:
            group = orm.Group(name=role)
            db.add(group)
        if orm_user not in group.users:
            group.users.append(orm_user)
        db.commit()
        self.log.info(
            "User %s was created without an aidc role: given the default role %s "
            "(change it with `aidc user set-role`; set a password with `aidc user passwd %s`)",
            user.name, role, user.name,
        )
        audit.record(
            "user", actor="hub", action="add", target=user.name, result="success",
            role=role, reason=f"created without an aidc role: default role {role}",
        )


class SystemAccountsMixin(LoggingConfigurable):
    """As root, back each hub user with the Unix account ``<prefix><name>`` of this platform.

    Accounts are created when a user is added (``aidc user add``, the admin page, or a
    first company sign-in); an account another platform or the system owns is never used.
    """

    system_username_prefix = Unicode(
        accounts.DEFAULT_PREFIX,
        help="""Prefix of the Unix account that backs each hub user
        (hub user `alice` is Unix account `jupyter-alice`, as in The Littlest JupyterHub).
        Must match `SystemUserSpawner.system_username_prefix`.""",
    ).tag(config=True)

    @property
    def _data_dir(self) -> str | None:
        d = platform_data_dir()
        return str(d.root) if d else None

    def system_username(self, name: str) -> str:
        return accounts.system_name(name, self.system_username_prefix)

    def system_user_exists(self, user) -> bool:
        return accounts.is_managed(self.system_username(user.name), self._data_dir)

    def add_system_user(self, user) -> None:
        accounts.create_account(self.system_username(user.name), self._data_dir)

    async def add_user(self, user):
        if accounts.running_as_root() and not self.system_user_exists(user):
            self.add_system_user(user)
        result = super().add_user(user)
        if hasattr(result, "__await__"):
            await result


class SystemUserPAMAuthenticator(AuditedLoginMixin, DefaultRoleMixin, RemovedUserMixin, SystemAccountsMixin, PAMAuthenticator):
    """PAM sign-in where hub user ``alice`` is the Unix account ``<prefix>alice``.

    Only hub users (added with ``aidc user add``) may sign in, and the mapping means no
    hub name can authenticate as ``root`` or any account this platform did not create.
    """

    @default("open_sessions")
    def _no_pam_sessions(self):
        # PAM sessions need a login environment (systemd-logind) that containers lack;
        # JupyterHub recommends leaving them off unless needed.
        return False

    @default("allow_existing_users")
    def _allow_existing(self):
        return True

    def normalize_username(self, username):
        # PAM's round-trip would look the hub name up as a Unix name; names are mapped
        # instead, so only the generic normalisation applies
        return super(PAMAuthenticator, self).normalize_username(username)

    async def authenticate(self, handler, data):
        name = self.normalize_username(data.get("username", ""))
        if not self.validate_username(name) or not accounts.is_managed(
            self.system_username(name), self._data_dir
        ):
            return None
        mapped = dict(data, username=self.system_username(name))
        result = await super().authenticate(handler, mapped)
        return name if result else None

    def check_allowed_groups(self, username, authentication=None):
        return False  # Unix groups play no part: hub membership decides


class DevSharedPasswordAuthenticator(AuditedLoginMixin, DefaultRoleMixin, RemovedUserMixin, SharedPasswordAuthenticator):
    """Development mode (not root): the platform's users sign in with one shared password.

    Everything runs under the account that started the platform, so this mode offers no
    isolation between users; ``aidc up`` says so loudly when it starts in it.
    """

    @default("allow_existing_users")
    def _allow_existing(self):
        return True


class CompanyOIDCAuthenticator(AuditedLoginMixin, DefaultRoleMixin, RemovedUserMixin, SystemAccountsMixin, GenericOAuthenticator):
    """Company sign-in with OpenID Connect (Keycloak, Entra ID, Okta, Google, ...).

    GenericOAuthenticator needs each endpoint spelled out; with `oidc_issuer` they are
    read from the provider's discovery document instead. With `role_groups`, a user's
    aidc role follows their groups at the provider on every sign-in; without it, roles
    are set with ``aidc user set-role``.
    """

    oidc_issuer = Unicode(
        "",
        help="""OpenID Connect issuer URL (e.g. https://sso.example.com/realms/ai).
        The authorize, token and userinfo endpoints are read from
        `<issuer>/.well-known/openid-configuration` when not set explicitly.""",
    ).tag(config=True)

    role_groups = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="""Map of identity-provider group -> aidc role, e.g.
        `{"ml-platform-admins": "admin", "data-science": "scientist"}`. When set, the
        groups claim (`oauth_user.groups`) decides the user's role at every sign-in and
        users in none of these groups are refused.""",
    ).tag(config=True)

    _discovered: dict | None = None

    def _discovery(self) -> dict:
        if self._discovered is None:
            if not self.oidc_issuer:
                self._discovered = {}
            else:
                url = self.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"
                r = requests.get(url, timeout=30)
                r.raise_for_status()
                self._discovered = r.json()
        return self._discovered

    @default("authorize_url")
    def _authorize_url(self):
        return self._discovery().get("authorization_endpoint", "")

    @default("token_url")
    def _token_url(self):
        return self._discovery().get("token_endpoint", "")

    @default("userdata_url")
    def _userdata_url(self):
        return self._discovery().get("userinfo_endpoint", "")

    @default("scope")
    def _scope(self):
        return ["openid", "profile", "email"]

    @default("username_claim")
    def _username_claim(self):
        return "preferred_username"

    @default("login_service")
    def _login_service(self):
        return "company sign-in"

    @default("manage_groups")
    def _manage_groups(self):
        return bool(self.role_groups)

    @default("auth_state_groups_key")
    def _groups_key(self):
        return self._aidc_role_groups

    def _aidc_role_groups(self, auth_state: dict) -> list[str]:
        """The one aidc role group (the highest) for the provider groups of a user."""
        provider_groups = (auth_state.get("oauth_user") or {}).get("groups") or []
        mapped = {self.role_groups[g] for g in provider_groups if g in self.role_groups}
        role = roles.role_of(mapped)
        return [role] if role else []

    async def check_allowed(self, username, auth_model):
        if self.role_groups and auth_model is not None:
            return bool(self._aidc_role_groups(auth_model.get("auth_state") or {}))
        return await super().check_allowed(username, auth_model)


class CompanyLDAPAuthenticator(AuditedLoginMixin, DefaultRoleMixin, RemovedUserMixin, SystemAccountsMixin, LDAPAuthenticator):
    """Company sign-in against an LDAP directory (OpenLDAP, Active Directory)."""
