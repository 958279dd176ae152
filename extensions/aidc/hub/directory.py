"""The hub's user list, edited the same way whether or not the platform is running.

JupyterHub keeps users, groups and tokens in its database and caches them while it
runs, so a running hub must be changed through its REST API (:class:`HubAPIDirectory`,
authenticated as the ``aidc-cli`` service, with the platform's one hub client
:class:`aidc.hubapi.HubAPI`), and a stopped one through its database
(:class:`DatabaseDirectory`, with JupyterHub's own ORM). Both give the same answers and
the same errors; :func:`open_directory` picks the right one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime

from .. import roles
from ..errors import ConflictError, NotFoundError
from ..hubapi import HubAPI
from ..paths import DataDir


@dataclass
class UserRecord:
    name: str
    role: str | None
    server_running: bool = False
    last_activity: str | None = None


class UserDirectory:
    """Operations on the hub's users. Subclasses implement every method."""

    online = False

    def list(self) -> list[UserRecord]:
        raise NotImplementedError

    def get(self, name: str) -> UserRecord:
        raise NotImplementedError

    def add(self, name: str, role: str) -> UserRecord:
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError

    def set_role(self, name: str, role: str) -> UserRecord:
        raise NotImplementedError

    def new_token(self, name: str, note: str, expires_in: int | None) -> str:
        raise NotImplementedError


# -- running hub ---------------------------------------------------------------
class HubAPIDirectory(UserDirectory):
    """Through the REST API of a running hub."""

    online = True

    def __init__(self, api_url: str, token: str, tls_files=None):
        self.hub = HubAPI(api_url, token, tls_files=tls_files)

    @staticmethod
    def _record(model: dict) -> UserRecord:
        servers = model.get("servers") or {}
        return UserRecord(
            name=model["name"],
            role=roles.role_of(model.get("groups", []), model.get("admin", False)),
            server_running=bool(servers.get("", {}).get("ready")) or bool(model.get("server")),
            last_activity=model.get("last_activity"),
        )

    def list(self) -> list[UserRecord]:
        return [self._record(m) for m in self.hub.request("GET", "/users?limit=10000")]

    def get(self, name: str) -> UserRecord:
        try:
            return self._record(self.hub.request("GET", f"/users/{name}"))
        except NotFoundError:
            raise NotFoundError(f"no user named {name!r}") from None

    def add(self, name: str, role: str) -> UserRecord:
        try:
            self.hub.request("POST", f"/users/{name}")
        except ConflictError:
            raise ConflictError(f"user {name!r} already exists") from None
        # the hub has given the user its default role (aidc.hub.auth.DefaultRoleMixin):
        # set_role replaces it with the one asked for
        return self.set_role(name, role)

    def remove(self, name: str) -> None:
        self.get(name)
        self.hub.request("DELETE", f"/users/{name}")

    def set_role(self, name: str, role: str) -> UserRecord:
        self.get(name)
        self.hub.request("POST", f"/groups/{role}/users", {"users": [name]})
        for other in roles.ROLE_NAMES:
            if other != role:
                self.hub.request("DELETE", f"/groups/{other}/users", {"users": [name]})
        return self.get(name)

    def new_token(self, name: str, note: str, expires_in: int | None) -> str:
        self.get(name)
        body: dict = {"note": note}
        if expires_in:
            body["expires_in"] = expires_in
        return self.hub.request("POST", f"/users/{name}/tokens", body)["token"]


# -- stopped hub ---------------------------------------------------------------
class DatabaseDirectory(UserDirectory):
    """Directly in the hub database, with JupyterHub's ORM (only while the hub is stopped)."""

    def __init__(self, db_url: str):
        from jupyterhub import orm

        self.orm = orm
        # JupyterHub's migration check logs each step at INFO (and reconfigures logging
        # from its alembic.ini); a CLI user needs none of it
        logging.disable(logging.INFO)
        try:
            self.db = orm.new_session_factory(db_url)()
        finally:
            logging.disable(logging.NOTSET)

    def _user(self, name: str):
        user = self.orm.User.find(self.db, name)
        if user is None:
            raise NotFoundError(f"no user named {name!r}")
        return user

    def _record(self, user) -> UserRecord:
        last = user.last_activity
        return UserRecord(
            name=user.name,
            role=roles.role_of((g.name for g in user.groups), bool(user.admin)),
            server_running=False,
            last_activity=last.isoformat() + "Z" if isinstance(last, datetime) else None,
        )

    def _group(self, name: str):
        group = self.orm.Group.find(self.db, name)
        if group is None:
            group = self.orm.Group(name=name)
            self.db.add(group)
        return group

    def list(self) -> list[UserRecord]:
        return [self._record(u) for u in self.db.query(self.orm.User).order_by(self.orm.User.name)]

    def get(self, name: str) -> UserRecord:
        return self._record(self._user(name))

    def add(self, name: str, role: str) -> UserRecord:
        if self.orm.User.find(self.db, name) is not None:
            raise ConflictError(f"user {name!r} already exists")
        user = self.orm.User(name=name)
        self.db.add(user)
        self._group(role).users.append(user)
        self.db.commit()
        return self._record(user)

    def remove(self, name: str) -> None:
        self.db.delete(self._user(name))
        self.db.commit()

    def set_role(self, name: str, role: str) -> UserRecord:
        user = self._user(name)
        for g in list(user.groups):
            if g.name in roles.ROLE_NAMES and g.name != role:
                g.users.remove(user)
        group = self._group(role)
        if user not in group.users:
            group.users.append(user)
        user.admin = False if role != roles.ADMIN else user.admin
        self.db.commit()
        return self._record(user)

    def new_token(self, name: str, note: str, expires_in: int | None) -> str:
        user = self._user(name)
        client = self.db.query(self.orm.OAuthClient).filter_by(identifier="jupyterhub").first()
        if client is None:
            # the hub registers this client when it first starts; tokens need it to exist
            client = self.orm.OAuthClient(identifier="jupyterhub", description="JupyterHub")
            self.db.add(client)
            self.db.commit()
        token = user.new_api_token(note=note, expires_in=expires_in, scopes=["inherit"])
        self.db.commit()
        return token


# -- choosing ------------------------------------------------------------------
def running_platform(data_dir: DataDir) -> dict | None:
    """The state of the ``aidc up`` running on ``data_dir``, or None if none answers."""
    try:
        state = json.loads(data_dir.state_file.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not HubAPI(state["hub_api_url"], "", timeout=5, tls_files=_tls_files(state)).answers():
        return None
    return state


def _tls_files(state: dict):
    """Under internal TLS the hub's API wants a client certificate: the hub's own, which
    ``platform.json`` names (root reads it in the data directory)."""
    from ..security.internal_tls import InternalFiles

    files = state.get("internal_ssl")
    return InternalFiles(**files) if files else None


def open_directory(data_dir: DataDir) -> UserDirectory:
    state = running_platform(data_dir)
    if state is not None:
        token = data_dir.cli_token_file.read_text().strip()
        return HubAPIDirectory(state["hub_api_url"], token, tls_files=_tls_files(state))
    return DatabaseDirectory(data_dir.ensure().hub_db_url)
