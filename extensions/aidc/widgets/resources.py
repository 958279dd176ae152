"""``ResourceRequest``: choose a resource profile (its GPUs, cores, memory) and restart
my server on it.

The profiles are the platform's one declaration (``aidc.client.Client.profiles``, the
same the spawn form and ``aidc server start --profile`` offer). What can be known before
any call is checked first, with the rules the spawn form uses
(:func:`aidc.gpu.profiles.unsatisfiable_reason`) and the quota the resources service
reports; the rest (GPUs held by others: the spawn waits in the queue) is the hub's to say.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from dataclasses import fields
from html import escape

import ipywidgets as widgets

from ..gpu.profiles import ResourceProfile, unsatisfiable_reason
from . import markup
from .base import PlatformWidget
from .restart import log_path, restart_detached, restart_server, server_model


def in_own_server(name: str) -> bool:
    """Whether this kernel runs in ``name``'s default server (restarting it ends this kernel)."""
    return (os.environ.get("JUPYTERHUB_USER") == name
            and os.environ.get("JUPYTERHUB_SERVER_NAME", "") == "")


def describe_profile(p: ResourceProfile, free: dict) -> str:
    gpus = (f"{p.gpus} {p.gpu_kind} GPU unit{'s' if p.gpus != 1 else ''} "
            f"({free.get(p.gpu_kind, 0)} free now)") if p.gpus else "no GPU"
    return f"{gpus} · {p.cpu_cores:g} CPU cores · {p.memory_gb:g} GB memory"


class ResourceRequest(PlatformWidget):
    """The profiles offered, what each gives, and "Restart on this profile"."""

    def __init__(self, client=None, **kwargs):
        super().__init__(client, **kwargs)
        self.current = widgets.HTML()
        self.profile = widgets.Dropdown(description="Profile", options=[])
        self.details = widgets.HTML()
        self.restart_button = widgets.Button(description="Restart on this profile",
                                             button_style="warning", icon="refresh")
        self.buttons = [self.restart_button]
        self.profiles: dict[str, ResourceProfile] = {}
        self.inventory: dict = {}
        self.name: str | None = None
        self.current_profile: str | None = None
        self.children = [widgets.HTML("<b>My server's resources</b>"), self.current, self.profile,
                         self.details, self.restart_button, self.message]
        self.profile.observe(lambda _change: self._show_details(), names="value")
        self.restart_button.on_click(lambda _button: self.restart())
        if self.client is not None:
            self.call(self.load)

    def load(self) -> None:
        """Read the profiles, the GPUs (free, my quota) and my server's current profile."""
        known = {f.name for f in fields(ResourceProfile)}  # a newer service may say more
        self.profiles = {p["id"]: ResourceProfile(**{k: v for k, v in p.items() if k in known})
                         for p in self.client.profiles()}
        self.inventory = self.client.gpus()
        self.name = self.client.whoami()["name"]
        if in_own_server(self.name):
            self.current_profile = os.environ.get("AIDC_PROFILE")
            running = True
        else:
            server = server_model(self.client, self.name)
            running = server is not None
            self.current_profile = ((server or {}).get("user_options") or {}).get("profile")
        if not running:
            self.current.value = "Your server is not running."
        else:
            self.current.value = ("Your server runs on profile <b>"
                                  f"{escape(self.current_profile or 'the default')}</b>.")
        self.profile.options = [(p.display_name, p.id) for p in self.profiles.values()]
        default = next((p.id for p in self.profiles.values() if p.default),
                       next(iter(self.profiles), None))
        self.profile.value = (self.current_profile if self.current_profile in self.profiles
                              else default)
        self._show_details()

    def _show_details(self) -> None:
        p = self.profiles.get(self.profile.value)
        if p is None:
            self.details.value = ""
            return
        self.details.value = markup.info(f"{p.description} — "
                                         f"{describe_profile(p, self.inventory.get('free') or {})}")

    def check(self, profile: str) -> str | None:
        """Why ``profile`` is refused before any call, or None."""
        p = self.profiles.get(profile)
        if p is None:
            return (f"no profile {profile!r}: this platform offers "
                    f"{', '.join(self.profiles) or 'none'}")
        if profile == self.current_profile:
            return f"your server already runs on profile {profile!r}"
        reason = unsatisfiable_reason(p, self.inventory.get("units") or [])
        if reason:
            return f"profile {profile!r} can never start here: it {reason}"
        limit = (self.inventory.get("quota") or {}).get("max_gpus")
        if limit is not None and p.gpus > limit:
            return f"profile {profile!r} asks for {p.gpus} GPUs; your quota is {limit}"
        return None

    def restart(self, profile: str | None = None) -> Future:
        """Restart my server on ``profile`` (default: the one chosen). From a kernel of that
        server, the restart runs in a process of its own and this kernel ends with the
        server; elsewhere the future ends with the new server ready."""
        if self.client is None or not self.profiles:
            return self.refused(self.error or "the profiles could not be read")
        profile = profile or self.profile.value
        problem = self.check(profile)
        if problem:
            return self.refused(problem)
        if in_own_server(self.name):
            def detach():
                restart_detached(self.client, profile)
                self.show_info(f"Restarting on profile {profile}: this server stops now and starts "
                               f"again with it; reload the page when it is back (progress in "
                               f"{log_path()}).")
            return self.act(detach, f"asking the hub to restart your server on {profile}")

        def restart():
            server = restart_server(self.client, profile, on_step=self.show_info)
            self.current_profile = profile
            self.current.value = f"Your server runs on profile <b>{escape(profile)}</b>."
            self.show_info(f"Your server is ready on profile {profile}.")
            return server
        return self.act(restart, f"restarting your server on {profile}")
