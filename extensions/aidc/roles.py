"""The platform's roles, declared once and reused by the hub and every service.

This module sits below the hub and the services (it imports nothing of either), so
that :mod:`aidc.services`, :mod:`aidc.gpu`, :mod:`aidc.jobs` and :mod:`aidc.models`
use it without importing the hub; ``aidc.hub.roles`` is the same module under its
old name.

A user's aidc role is the JupyterHub *group* of the same name; each group carries the
JupyterHub RBAC role of that name. Changing someone's role is therefore a group
membership change, which JupyterHub supports through its REST API while running and
through its database while stopped, so ``aidc user`` works in both cases.

Later services (jobs, models, dashboards, metrics) add scopes on themselves to these
roles with :func:`grant`, instead of defining roles of their own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable

from .errors import UsageError


@dataclass
class Role:
    """One aidc role: a JupyterHub role assigned to the group of the same name."""

    name: str
    description: str
    scopes: list[str] = field(default_factory=list)
    #: groups whose members also hold this role (admins are scientists too)
    extra_groups: list[str] = field(default_factory=list)


ADMIN = "admin"
SCIENTIST = "scientist"
VIEWER = "viewer"

#: JupyterHub grants its built-in ``user`` role to every user. aidc narrows it to
#: reading one's own identity, so that what a person may do comes from their aidc role
#: alone (a viewer must not be able to start a server).
BASE_USER_SCOPES = [
    "read:users:name!user",
    "read:users:groups!user",
    "read:users:activity!user",
    "users:activity!user",
]

_ROLES: dict[str, Role] = {
    ADMIN: Role(
        ADMIN,
        "Runs the platform: every user, server, job, model and service.",
        # the scopes of JupyterHub's built-in admin role; not redefined here
    ),
    SCIENTIST: Role(
        SCIENTIST,
        "Own JupyterLab server, own tokens, own jobs and models.",
        ["self"],
        extra_groups=[ADMIN],
    ),
    VIEWER: Role(
        VIEWER,
        "Reads dashboards and read-only views; cannot start a server.",
        ["read:users:name!user", "read:users:groups!user", "tokens!user"],
    ),
}

ROLE_NAMES: tuple[str, ...] = (ADMIN, SCIENTIST, VIEWER)

#: hub-managed services whose own token the platform's services read as a viewer's: the
#: dashboards read platform figures for every viewer and narrow per-user ones themselves
#: to the role of whoever looks (:mod:`aidc.dashboards.sources`); the metrics service
#: keeps the jobs service's figures as history (:mod:`aidc.monitor.jobs`)
VIEWING_SERVICES: frozenset[str] = frozenset({"dashboards", "metrics"})


def check_role(name: str) -> str:
    """Return ``name`` if it is an aidc role, else raise a :class:`UsageError` listing them."""
    if name not in _ROLES:
        raise UsageError(f"unknown role {name!r}; choose one of: {', '.join(ROLE_NAMES)}")
    return name


def grant(role: str, scopes: Iterable[str]) -> None:
    """Add scopes to a role (for services that plug in, e.g. ``access:services!service=jobs``)."""
    r = _ROLES[check_role(role)]
    if role == ADMIN:
        # admin already has access:services and admin:* scopes through JupyterHub's role
        return
    for s in scopes:
        if s not in r.scopes:
            r.scopes.append(s)


def holds(role: str | None, needed: str) -> bool:
    """Whether a user of aidc role ``role`` may do what ``needed`` allows.

    Admins may do what scientists may; scientists and viewers are apart (a viewer's
    read-only views are open to every signed-in user of a service, so no verb needs
    the viewer role itself).
    """
    if role is None:
        return False
    return role == needed or (role == ADMIN and needed == SCIENTIST)


def role_of(groups: Iterable[str], is_admin: bool = False) -> str | None:
    """The aidc role of a user from their group names (the highest wins)."""
    groups = set(groups)
    if is_admin or ADMIN in groups:
        return ADMIN
    for name in (SCIENTIST, VIEWER):
        if name in groups:
            return name
    return None


def hub_roles() -> list[dict]:
    """``c.JupyterHub.load_roles`` entries for the aidc roles (and the narrowed ``user``)."""
    roles: list[dict] = [
        {
            "name": "user",
            "description": "Every signed-in user: read own identity (aidc roles add the rest).",
            "scopes": list(BASE_USER_SCOPES),
        }
    ]
    for role in _ROLES.values():
        entry: dict = {"name": role.name, "groups": [role.name, *role.extra_groups]}
        if role.name != ADMIN:
            entry["description"] = role.description
            entry["scopes"] = copy.copy(role.scopes)
        roles.append(entry)
    return roles


def describe() -> list[tuple[str, str]]:
    """(name, description) of each role, for help texts and the README."""
    return [(r.name, r.description) for r in _ROLES.values()]
