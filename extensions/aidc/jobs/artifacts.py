"""Where a job's input snapshot and output notebook are kept: the platform's artifact
store (:mod:`aidc.artifacts`) rooted at ``c.ArtifactStore.url``.

A local folder (``<data-dir>/jobs/artifacts``) by default; ``s3://``, ``gs://``,
``abfs://`` or any other fsspec protocol when workers run on other machines (they
need the matching fsspec backend installed and credentials in their environment).
"""

from __future__ import annotations

from traitlets import Unicode, default

from .. import artifacts
from ..paths import data_dir


class JobArtifactStore(artifacts.ArtifactStore):
    """The jobs' artifact store: one folder per job under the configured root."""

    url = Unicode(
        help="""fsspec URL of the folder holding job artifacts (input snapshots, output
        notebooks). Default: `<data-dir>/jobs/artifacts` on local disk.""",
    ).tag(config=True)

    @default("url")
    def _default_url(self) -> str:
        return str(data_dir().jobs_artifacts)

    def job_url(self, job_id: str, name: str) -> str:
        return self.url_for(job_id, name)


#: the name the jobs service, its configuration (``c.ArtifactStore.url``) and tests use
ArtifactStore = JobArtifactStore
