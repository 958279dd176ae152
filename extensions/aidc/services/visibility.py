"""Who may see and who may change a thing that belongs to someone: one rule for every service.

Models, datasets, jobs, schedules and GPU claims each have an owner. Some (models,
datasets) also have a ``visibility``:

* ``"private"``: the owner and admins;
* ``"group"``: also members of the groups the thing was shared with (the owner's groups
  when it was made). aidc's role groups (``admin``, ``scientist``, ``viewer``) do not
  count: being a scientist is not membership of a team;
* ``"public"``: also everyone signed in to the service.

A thing the caller may not see does not exist for them: services answer 404 with the
same message as for a name that is not there (:func:`visible`), never 403, so that no
one learns another user's private names. Seeing is not changing: only the owner and
admins change a thing (:func:`owned`, a 403 for a thing the caller can see).

Use it from a :class:`~aidc.services.base.ServiceHandler` through ``self.caller``::

    model = visible(self.caller, registry.model(name), f"no model {name!r}")
    owned(self.caller, model, f"only the owner of {name!r} and admins may change it")
    found = [m for m in registry.find_models() if self.caller.can_see(m)]

or for a thing that has an owner only (a job)::

    if not self.caller.can_see(owner=job["owner"]): raise NotFoundError(...)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .. import roles
from ..errors import NotFoundError, PermissionDeniedError

PRIVATE = "private"
GROUP = "group"
PUBLIC = "public"
#: the values a ``visibility`` may take
VISIBILITIES = (PRIVATE, GROUP, PUBLIC)


@dataclass(frozen=True)
class Caller:
    """The signed-in user a service answers: name, hub groups, and whether an admin."""

    name: str
    groups: frozenset[str] = frozenset()
    is_admin: bool = False

    @classmethod
    def of(cls, user: Mapping) -> Caller:
        """From JupyterHub's user model (a service handler's ``current_user``)."""
        groups = frozenset(user.get("groups") or ())
        is_admin = roles.role_of(groups, bool(user.get("admin", False))) == roles.ADMIN
        return cls(user["name"], groups, is_admin)

    def owns(self, owner: str) -> bool:
        """Whether the caller may change a thing of ``owner``'s: they are the owner or an admin."""
        return self.is_admin or owner == self.name

    def can_see(self, resource: Mapping | None = None, *, owner: str | None = None,
                visibility: str = PRIVATE, groups: Iterable[str] = ()) -> bool:
        """Whether the caller may see a thing, given as a mapping with ``owner`` and optionally
        ``visibility`` and ``groups`` (a registry row), or as those keywords."""
        if resource is not None:
            owner = resource["owner"]
            visibility = resource.get("visibility") or PRIVATE
            groups = resource.get("groups") or ()
        if self.owns(owner):
            return True
        if visibility == PUBLIC:
            return True
        return visibility == GROUP and bool(
            (set(groups) - set(roles.ROLE_NAMES)) & self.groups)


def visible(caller: Caller, resource: Mapping, missing: str) -> Mapping:
    """``resource`` when ``caller`` may see it; else :class:`NotFoundError` (404) with
    ``missing``, the message for a name that does not exist."""
    if not caller.can_see(resource):
        raise NotFoundError(missing)
    return resource


def owned(caller: Caller, resource: Mapping, refused: str) -> Mapping:
    """``resource`` when ``caller`` may change it (owner or admin); else
    :class:`PermissionDeniedError` (403) with ``refused``. Check :func:`visible` first:
    a thing the caller cannot see answers 404, not this 403."""
    if not caller.owns(resource["owner"]):
        raise PermissionDeniedError(refused)
    return resource
