"""Spawners: each user's JupyterLab server runs as that user's own Unix account.

:class:`SystemUserSpawner` is JupyterHub's :class:`~jupyterhub.spawner.LocalProcessSpawner`
with one change: hub user ``alice`` runs as Unix account ``jupyter-alice`` (home 0700),
not as a Unix account named ``alice``. :class:`SharedAccountSpawner` is the development
mode used when the platform is not root: every server runs as the account that started
the platform, each in its own folder, with no isolation between users.

Both record server start and stop in the audit log, and get their GPUs, CPU cores and
memory from a resource profile through :class:`~aidc.hub.gpu_spawner.GPUAllocationMixin`,
and return from ``start()`` once the server listens (:mod:`aidc.hub.listening`).
"""

from __future__ import annotations

import inspect
import os
import pwd

from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner
from traitlets import Unicode, default

from ..paths import data_dir, platform_data_dir
from ..security import audit
from .. import accounts
from .gpu_spawner import GPUAllocationMixin
from .listening import ListeningStartMixin


class AuditedSpawnerMixin:
    """Record start/stop of the server in the audit log, with who asked for it."""

    def _actor(self) -> str:
        handler = getattr(self, "handler", None)
        user = getattr(handler, "current_user", None) if handler is not None else None
        name = getattr(user, "name", None)
        return name or "hub"

    def _target(self) -> str:
        return f"{self.user.name}/{self.name}"

    def _system_user(self) -> str | None:
        return None

    async def start(self):
        try:
            result = await super().start()
        except Exception as e:
            audit.record(
                "server", actor=self._actor(), action="start", target=self._target(),
                result="failure", reason=str(e)[:500], system_user=self._system_user(),
            )
            raise
        audit.record(
            "server", actor=self._actor(), action="start", target=self._target(),
            result="success", system_user=self._system_user(),
        )
        return result

    async def run_post_stop_hook(self):
        # JupyterHub runs this after every stop, including of a server that died on its
        # own (when it does not call stop() at all), so every end is recorded once
        audit.record(
            "server", actor="hub", action="stop", target=self._target(),
            result="success", system_user=self._system_user(),
        )
        result = super().run_post_stop_hook()
        if inspect.isawaitable(result):
            await result


class SystemUserSpawner(ListeningStartMixin, AuditedSpawnerMixin, GPUAllocationMixin,
                        LocalProcessSpawner):
    """LocalProcessSpawner running hub user ``alice`` as Unix account ``jupyter-alice``."""

    system_username_prefix = Unicode(
        accounts.DEFAULT_PREFIX,
        help="""Prefix of the Unix account that backs each hub user; must match
        the authenticator's `system_username_prefix`.""",
    ).tag(config=True)

    @property
    def system_username(self) -> str:
        return accounts.system_name(self.user.name, self.system_username_prefix)

    def _system_user(self) -> str | None:
        return self.system_username

    def make_preexec_fn(self, name):
        return super().make_preexec_fn(self.system_username)

    def user_env(self, env):
        pw = pwd.getpwnam(self.system_username)
        env["USER"] = pw.pw_name
        env["LOGNAME"] = pw.pw_name
        env["HOME"] = pw.pw_dir
        env["SHELL"] = pw.pw_shell or "/bin/bash"
        env.update(accounts.tmpdir_env(pw.pw_dir, pw.pw_uid, pw.pw_gid))  # not the shared /tmp
        return env

    async def start(self):
        platform = platform_data_dir()
        if not accounts.is_managed(self.system_username, str(platform.root) if platform else None):
            raise RuntimeError(
                f"Unix account {self.system_username} is missing; re-add the user with "
                "`aidc user add`"
            )
        return await super().start()

    async def move_certs(self, paths):
        """Internal TLS: the server's key, certificate and trust bundle go to a 0700 folder
        in the Unix account's home, owned by it (JupyterHub's own would look up an account
        named after the hub user, ``alice``, not ``jupyter-alice``)."""
        from ..security.internal_tls import stage_for_account

        return stage_for_account(paths, self.system_username)


class SharedAccountSpawner(ListeningStartMixin, AuditedSpawnerMixin, GPUAllocationMixin,
                           SimpleLocalProcessSpawner):
    """Development mode: every server runs as the platform's own account, one folder each."""

    @default("home_dir_template")
    def _default_home_template(self):
        return os.path.join(data_dir().dev_homes, "{username}")
