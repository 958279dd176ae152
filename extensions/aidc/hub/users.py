"""Platform users: the hub account, its role, and (as root) its Unix account, kept together.

This is what ``aidc user ...`` and ``aidc token`` call. Each action changes the hub
(through :mod:`aidc.hub.directory`) and the Unix account (through
:mod:`aidc.accounts`) so that neither is left without the other, and records
the change in the audit log. A removed user's secrets for jobs go too: a running hub has the
jobs service remove them (:mod:`aidc.hub.removal`), a stopped one's are removed here.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from urllib.parse import quote

from ..errors import AidcError, ConflictError, UsageError
from ..paths import DataDir
from ..security import audit
from .. import accounts, roles
from .directory import UserDirectory, UserRecord, open_directory

log = logging.getLogger("aidc.users")

INITIAL_ADMIN = "admin"


class PlatformUsers:
    """Add, remove and change the users of one platform (its data directory)."""

    def __init__(self, data_dir: DataDir, directory: UserDirectory | None = None):
        self.data_dir = data_dir
        self.directory = directory or open_directory(data_dir)
        self.system_accounts = accounts.running_as_root()
        self.audit_path = data_dir.audit_log

    def _audit(self, action: str, target: str, result: str, **extra) -> None:
        audit.record(
            "user", self.audit_path, actor=audit.cli_actor(), action=action,
            target=target, result=result, **extra,
        )

    def _unix(self, name: str) -> str:
        return accounts.system_name(name)

    def add(self, name: str, role: str, password: str | None = None) -> UserRecord:
        """Create the user with ``role``; as root, its Unix account with ``password``."""
        try:
            roles.check_role(role)
            self.check_new(name)
            created_account = False
            if self.system_accounts:
                if password is None:
                    raise UsageError("a password is needed to create a Unix account")
                created_account = accounts.account(self._unix(name)) is None
                accounts.create_account(self._unix(name), self.data_dir.root)
                accounts.set_password(self._unix(name), password)
            try:
                record = self.directory.add(name, role)
            except Exception:
                if created_account:
                    accounts.delete_account(self._unix(name), data_dir=self.data_dir.root)
                raise
        except AidcError as e:
            self._audit("add", name, "failure", role=role, reason=str(e))
            raise
        self._audit("add", name, "success", role=role)
        return record

    def _keep_an_admin(self, name: str, action: str) -> None:
        """Refuse (ConflictError, exit 1) to leave the platform without an administrator."""
        if self.directory.get(name).role != roles.ADMIN:
            return
        admins = [r.name for r in self.directory.list() if r.role == roles.ADMIN]
        if admins == [name]:
            raise ConflictError(
                f"{name} is the last administrator: cannot {action} them. Make another "
                f"user an administrator first (aidc user set-role NAME {roles.ADMIN})"
            )

    def check_new(self, name: str) -> None:
        """Refuse a bad or taken name before anything else is asked (e.g. a password)."""
        accounts.validate_name(name)
        try:
            self.directory.get(name)
        except AidcError:
            return
        raise ConflictError(f"user {name!r} already exists")

    def remove(self, name: str, keep_home: bool = False, last_admin: bool = False) -> str | None:
        """Remove the user (stopping their server); returns where a kept home went.

        ``last_admin``: remove them even if they are the last administrator (taking a
        platform down); otherwise that is refused.
        """
        try:
            if not last_admin:
                self._keep_an_admin(name, "remove")
            self.directory.remove(name)
            if not self.directory.online:  # a running hub has the jobs service do it (aidc.hub.removal)
                self._remove_secrets(name)
            kept = None
            if self.system_accounts:
                kept = accounts.delete_account(
                    self._unix(name), keep_home=keep_home, data_dir=self.data_dir.root
                )
        except AidcError as e:
            self._audit("remove", name, "failure", reason=str(e))
            raise
        self._audit("remove", name, "success")
        return str(kept) if kept else None

    def _remove_secrets(self, name: str) -> None:
        """With the platform stopped, remove ``name``'s secrets for jobs here, as the jobs
        service does when a running hub removes a user: a new user of that name finds none.
        The store's settings come from the data directory's drop-ins, as the service's do."""
        from ..jobs.secrets import SecretStore
        from ..jobs.store import JobStore
        from ..services.base import ServiceApp

        app = ServiceApp()
        app.load_drop_ins(str(self.data_dir.root))
        root = app.config.SecretStore.get("root") or str(self.data_dir.root.resolve() / "jobs" / "secrets")
        if not (Path(root) / quote(name, safe="")).exists():
            return  # values are written before their rows: no folder, no secrets
        where = str(self.data_dir.root)
        store = SecretStore(JobStore(config=app.config, data_dir=where), config=app.config, data_dir=where)
        for secret in store.remove_owner(name):
            audit.record("secret", self.audit_path, actor=audit.cli_actor(), action="delete",
                         target=f"{name}/{secret}", result="success",
                         reason=f"the user {name} was removed")

    def set_role(self, name: str, role: str) -> UserRecord:
        try:
            roles.check_role(role)
            if role != roles.ADMIN:
                self._keep_an_admin(name, f"make a {role} of")
            record = self.directory.set_role(name, role)
        except AidcError as e:
            self._audit("set-role", name, "failure", role=role, reason=str(e))
            raise
        self._audit("set-role", name, "success", role=role)
        return record

    def set_password(self, name: str, password: str) -> None:
        self.directory.get(name)
        if not self.system_accounts:
            raise UsageError(
                "passwords are per user only when the platform runs as root; in development "
                "mode everyone signs in with the shared password in "
                f"{self.data_dir.dev_password_file}"
            )
        accounts.set_password(self._unix(name), password)

    def list(self) -> list[UserRecord]:
        return self.directory.list()

    def new_token(self, name: str, note: str = "aidc token", expires_in: int | None = None) -> str:
        if expires_in is not None and expires_in <= 0:
            raise UsageError("--expires-in must be a positive number of seconds")
        try:
            token = self.directory.new_token(name, note, expires_in)
        except AidcError as e:
            self._audit("issue-token", name, "failure", reason=str(e))
            raise
        self._audit("issue-token", name, "success")
        return token

    def ensure_initial_admin(self) -> str | None:
        """On first start, create the ``admin`` user; return its password (once) or None."""
        pw_file = self.data_dir.initial_admin_password
        if pw_file.exists():
            return None
        password = secrets.token_urlsafe(18)
        try:
            self.directory.get(INITIAL_ADMIN)
        except AidcError:
            self.add(INITIAL_ADMIN, roles.ADMIN, password)
        else:
            if self.system_accounts:
                accounts.set_password(self._unix(INITIAL_ADMIN), password)
        if not self.system_accounts:
            password = self.data_dir.secret(self.data_dir.dev_password_file, 16)
        self.data_dir.write_private(pw_file, password + "\n")
        return password
