"""``JobLauncher``: the parameters form of a notebook, and submit as a job.

The form is made from what the jobs service reads in the notebook's ``parameters`` cell
(names, types, defaults, help: ``GET services/jobs/api/parameters``), plus the job's GPUs,
time-out, retries and priority. Each value is checked against its type before anything is
sent (:mod:`aidc.widgets.fields`); what only the service can check (my GPU quota, a
notebook that changed since) comes back as its message. A submitted job is followed
below the form by a :class:`~aidc.widgets.monitor.JobMonitor`.
"""

from __future__ import annotations

from concurrent.futures import Future
from html import escape

import ipywidgets as widgets

from .. import jobs
from ..jobs.client import API
from . import markup
from .base import PlatformWidget
from .fields import ParameterField
from .monitor import JobMonitor


class JobLauncher(PlatformWidget):
    """``JobLauncher("train.ipynb")``: the notebook's parameters as a form; Submit runs it."""

    def __init__(self, path: str, client=None, gpus: int = 0, monitor_refresh_seconds: float = 1.0,
                 **kwargs):
        super().__init__(client, **kwargs)
        self.path = path
        self.monitor_refresh_seconds = monitor_refresh_seconds
        self.fields: list[ParameterField] = []
        self.note = widgets.HTML()
        style = {"description_width": "initial"}
        self.gpus = widgets.BoundedIntText(value=gpus, min=0, max=64, description="GPUs",
                                           style=style)
        self.timeout = widgets.BoundedFloatText(value=0, min=0, max=7 * 86400, style=style,
                                                description="Time-out (s, 0: none)")
        self.retries = widgets.BoundedIntText(value=0, min=0, max=10, description="Retries",
                                              style=style)
        self.priority = widgets.IntText(value=0, description="Priority", style=style)
        self.submit_button = widgets.Button(description="Submit job", button_style="primary",
                                            icon="play")
        self.submit_button.on_click(lambda _button: self.submit())
        self.buttons = [self.submit_button]
        self.form = widgets.VBox()
        #: the last job submitted, and its monitor
        self.job: jobs.Job | None = None
        self.monitor: JobMonitor | None = None
        self.children = [widgets.HTML(f"<b>Run {escape(path)} as a job</b>"), self.note, self.form,
                         widgets.HBox([self.gpus, self.timeout]),
                         widgets.HBox([self.retries, self.priority]),
                         self.submit_button, self.message]
        if self.client is not None:
            self.call(self.load)

    def load(self) -> None:
        """Read the notebook's parameters and build the form."""
        spec = self.client.get_json(f"{API}/parameters", params={"path": self.path})
        self.fields = [ParameterField(p) for p in spec["parameters"]]
        self.form.children = [f.widget for f in self.fields]
        if not spec["has_parameters_cell"]:
            self.note.value = markup.info(
                f"{self.path} has no cell tagged 'parameters', so it runs with no parameters; "
                "tag the cell that sets its defaults with 'parameters' to set them here.")
        elif not self.fields:
            self.note.value = markup.info(f"The parameters cell of {self.path} sets no variables.")

    def parameters(self) -> tuple[dict, list[str]]:
        """The values that differ from the notebook's defaults, and the problems (each also
        marked beside its input)."""
        values, problems = {}, []
        for f in self.fields:
            send, value, problem = f.read()
            if problem:
                problems.append(f"{f.name}: {problem}")
            elif send:
                values[f.name] = value
        return values, problems

    def submit(self) -> Future:
        """Check the form and submit the job; the future gives the :class:`aidc.jobs.Job`
        (None when refused)."""
        if self.client is None:
            return self.refused(self.error or "no platform to call")
        values, problems = self.parameters()
        if problems:
            return self.refused("not submitted, fix the marked values: " + "; ".join(problems))
        options = {"gpus": self.gpus.value, "timeout": self.timeout.value or None,
                   "retries": self.retries.value or None, "priority": self.priority.value or None}

        def submit():
            job = jobs.submit(self.path, values, client=self.client, **options)
            self.job = job
            if self.monitor is not None:
                self.monitor.close()
            self.monitor = JobMonitor(job, refresh_seconds=self.monitor_refresh_seconds)
            self.children = [*self.children[:7], self.monitor]
            self.show_info(f"submitted job {job.id}")
            return job
        return self.act(submit, f"submitting {self.path}")
