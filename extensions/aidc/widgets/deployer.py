"""``ModelDeployer``: serve a version of a model, with replicas and a canary; roll back.

Through :mod:`aidc.models` (the one client). A deploy waits until the replicas are
ready, so actions run in the widget's worker thread; the deployment's state refreshes
every ``refresh_seconds``. A canary weight outside 0–1, or a canary that is the primary
version, is refused before any call.
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from html import escape

import ipywidgets as widgets

from .. import models
from ..errors import NotFoundError
from . import markup
from .base import PlatformWidget

NO_CANARY = "none"


class ModelDeployer(PlatformWidget):
    """``ModelDeployer("mnist")``: version, replicas, canary version and weight; Deploy,
    Promote and Roll back.

    As with :func:`aidc.models.deploy`, what a deploy does not name stays as deployed: a
    canary version of ``none`` leaves a canary in place (Roll back drops it)."""

    default_refresh_seconds = 5.0

    def __init__(self, name: str, client=None, refresh_seconds: float | None = None, **kwargs):
        super().__init__(client, refresh_seconds, **kwargs)
        self.name = name
        style = {"description_width": "initial"}
        self.version = widgets.Dropdown(description="Version", options=[], style=style)
        self.replicas = widgets.BoundedIntText(value=1, min=1, max=64, description="Replicas",
                                               style=style)
        self.canary_version = widgets.Dropdown(description="Canary version", style=style,
                                               options=[(NO_CANARY, NO_CANARY)])
        # a text box, not a slider: a slider would quietly clamp 1.5 to 1
        self.canary_weight = widgets.FloatText(value=0.1, description="Canary weight (0–1)",
                                               style=style)
        self.state = widgets.HTML()
        self.deploy_button = widgets.Button(description="Deploy", button_style="primary",
                                            icon="rocket")
        self.promote_button = widgets.Button(description="Promote canary", icon="arrow-up")
        self.rollback_button = widgets.Button(description="Roll back", button_style="warning",
                                              icon="undo")
        self.deploy_button.on_click(lambda _button: self.deploy())
        self.promote_button.on_click(lambda _button: self.promote())
        self.rollback_button.on_click(lambda _button: self.rollback())
        self.buttons = [self.deploy_button, self.promote_button, self.rollback_button]
        #: the deployment as last read (None: not deployed)
        self.deployment: models.Deployment | None = None
        self.children = [widgets.HTML(f"<b>Model {escape(name)}</b>"), self.state,
                         widgets.HBox([self.version, self.replicas]),
                         widgets.HBox([self.canary_version, self.canary_weight]),
                         widgets.HBox(self.buttons), self.message]
        if self.client is not None:
            self.call(self.load)
            if self.error is None:  # a model that is not there: its message stays
                self.start_refresh()

    def load(self) -> None:
        """Read the model's versions and its deployment."""
        model = models.get(self.name, client=self.client)
        versions = sorted((v["version"] for v in model.get("versions") or []), reverse=True)
        self.version.options = [(f"v{v}", v) for v in versions]
        self.canary_version.options = [(NO_CANARY, NO_CANARY), *((f"v{v}", v) for v in versions)]
        self.canary_version.value = NO_CANARY
        self.refresh()
        dep = self.deployment
        if dep is not None and dep["version"] in versions:
            self.version.value = dep["version"]
            self.replicas.value = max(1, dep.get("replicas") or 1)
        else:  # not deployed: the latest version
            self.version.value = versions[0] if versions else None

    def refresh(self) -> None:
        try:
            dep = models.deployment(self.name, client=self.client)
        except NotFoundError:
            dep = None
        with self._state_lock:
            self.deployment = dep
            self.state.value = (markup.info("not deployed") if dep is None else
                                f"{markup.badge('ready' if dep.get('ready') else 'starting')} "
                                f"<span class='aidc-w-deployment'>{escape(dep.summary())}</span>")

    def check(self) -> str | None:
        """Why the form's deploy is refused before any call, or None."""
        if self.version.value is None:
            return f"model {self.name!r} has no version to deploy"
        if self.canary_version.value != NO_CANARY:
            weight = self.canary_weight.value
            if not isinstance(weight, (int, float)) or math.isnan(weight) or not 0 <= weight <= 1:
                return (f"the canary weight is the share of requests sent to the canary: a number "
                        f"from 0 to 1 (0.1 sends 10%), not {weight:g}")
            if self.canary_version.value == self.version.value:
                return (f"the canary must be another version than the one served "
                        f"(v{self.version.value})")
        return None

    def deploy(self) -> Future:
        """Deploy the chosen version (and canary) with the replicas; the future gives the
        :class:`aidc.models.Deployment` (None when refused)."""
        problem = "no platform to call" if self.client is None else self.check()
        if problem:
            return self.refused(problem)
        canary = (None if self.canary_version.value == NO_CANARY else
                  {"version": self.canary_version.value, "weight": float(self.canary_weight.value)})
        version, replicas = self.version.value, self.replicas.value
        return self._act(lambda: models.deploy(self.name, version=version, replicas=replicas,
                                               canary=canary, client=self.client),
                         f"deploying {self.name} v{version}")

    def rollback(self) -> Future:
        """Drop the canary, or go back to the version served before the last deploy."""
        return self._act(lambda: models.rollback(self.name, client=self.client),
                         f"rolling {self.name} back")

    def promote(self) -> Future:
        """Make the canary the primary version."""
        return self._act(lambda: models.promote(self.name, client=self.client),
                         f"promoting the canary of {self.name}")

    def _act(self, call, busy: str) -> Future:
        if self.client is None:
            return self.refused(self.error or "no platform to call")

        def run():
            dep = call()
            self.refresh()
            self.show_info(f"{self.name}: {dep.summary()}")
            return dep
        return self.act(run, busy)
