"""Where a job's input snapshot and output notebook are kept: the platform's artifact
store (:mod:`aidc.artifacts`) rooted at ``c.ArtifactStore.url``.

A local folder (``<data-dir>/jobs/artifacts``) by default; ``s3://``, ``gs://``,
``abfs://`` or any other fsspec protocol when workers run on other machines (they
need the matching fsspec backend installed and credentials in their environment).

Encrypted at rest when the platform's encryption is on, each job under a key of its own
that its worker gets with the task (:mod:`aidc.jobs.jobkeys`).
"""

from __future__ import annotations

from traitlets import Unicode, default

from .. import artifacts
from ..paths import data_dir
from .jobkeys import ServiceJobKeys


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

    def encrypt_with(self, ring) -> None:
        """Encrypt every job's objects from now on (each under its own job key, wrapped by
        ``ring``, :class:`aidc.security.keys.KeyRing`)."""
        artifacts.encrypt_under(self.url, ServiceJobKeys(ring, self.url))

    def worker_key(self, job_id: str) -> str | None:
        """The job key a worker needs for ``job_id``'s objects (encoded for the task's
        spec), or None when the store is not encrypted."""
        keys = artifacts.encrypted_root(self.url)
        if not isinstance(keys, ServiceJobKeys):
            return None
        return keys.job_key(job_id).encoded()


#: the name the jobs service, its configuration (``c.ArtifactStore.url``) and tests use
ArtifactStore = JobArtifactStore
