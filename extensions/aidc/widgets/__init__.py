"""aidc's notebook widgets (ipywidgets): resources, jobs, models and GPUs without leaving
the notebook, in JupyterLab and in Voila::

    from aidc.widgets import GPUGauge, JobLauncher, JobMonitor, ModelDeployer, ResourceRequest
    JobLauncher("train.ipynb")      # the parameters form; Submit runs it and follows it

Each widget calls the platform through the one client (:mod:`aidc.client`, as the
Python API and the CLI do), shows a refusal as the service's message inside itself,
refreshes in a background thread (:mod:`~aidc.widgets.refresh`) and stops when closed.
One module per widget: :mod:`~aidc.widgets.resources`, :mod:`~aidc.widgets.launcher`
(with its typed inputs, :mod:`~aidc.widgets.fields`), :mod:`~aidc.widgets.monitor` (and
its chart, :mod:`~aidc.widgets.chart`), :mod:`~aidc.widgets.deployer`,
:mod:`~aidc.widgets.gauge`.
"""

from .deployer import ModelDeployer
from .gauge import GPUGauge
from .launcher import JobLauncher
from .monitor import JobMonitor
from .resources import ResourceRequest

__all__ = ["GPUGauge", "JobLauncher", "JobMonitor", "ModelDeployer", "ResourceRequest"]
