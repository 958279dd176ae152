"""A model version's lineage: the job that produced it, as the jobs service describes it.

The models service does not open the jobs database: it asks the jobs service's API
(``GET /services/jobs/api/jobs/ID/lineage``) with its own hub token, which the hub
lets reach the jobs service (the ``service-models`` role holds
``access:services!service=jobs``) and which that route accepts from the models service
alone. The job comes back whoever owns it, so the check that it is the caller's (or
that the caller is an admin) is made here, by :func:`check_owner`, before anything
of it is recorded.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Float, Unicode, default
from traitlets.config import LoggingConfigurable

from ..errors import PlatformError, UsageError


class JobLineage(LoggingConfigurable):
    """Looks jobs up in the jobs service, for the lineage of model versions."""

    jobs_url = Unicode(
        help="""Base URL of the jobs service, as the models service reaches it
        (default: the platform's public URL, `$AIDC_URL/services/jobs`).""",
    ).tag(config=True)

    timeout = Float(30.0, help="Seconds to wait for the jobs service's answer.").tag(config=True)

    @default("jobs_url")
    def _default_jobs_url(self) -> str:
        return os.environ.get("AIDC_URL", "http://127.0.0.1:8000").rstrip("/") + "/services/jobs"

    def __init__(self, token: str | None = None, **kwargs):
        super().__init__(**kwargs)
        #: the models service's own hub token
        self.token = token if token is not None else os.environ.get("JUPYTERHUB_API_TOKEN", "")

    async def job(self, job_id: str) -> dict | None:
        """The jobs service's view of ``job_id`` (``GET /api/jobs/ID``'s fields), or None
        when there is no such job."""
        url = f"{self.jobs_url.rstrip('/')}/api/jobs/{quote(job_id, safe='')}/lineage"
        try:
            response = await AsyncHTTPClient().fetch(
                url, headers={"Authorization": f"token {self.token}"},
                request_timeout=self.timeout, follow_redirects=False)
        except HTTPClientError as e:
            if e.code == 404:
                return None
            raise PlatformError(f"the jobs service could not describe job {job_id} for the "
                                f"model's lineage (HTTP {e.code}); try again later") from None
        except OSError as e:
            raise PlatformError(f"the jobs service is not reachable to check the model's "
                                f"lineage ({e}); try again later") from None
        return json.loads(response.body)


def check_owner(job: dict | None, job_id: str, caller) -> dict:
    """``job`` if ``caller`` (an :class:`aidc.services.visibility.Caller`) owns it or is an
    admin; otherwise the same refusal whether the job exists or not."""
    if job is None or not caller.owns(job["owner"]):
        raise UsageError(f"the lineage names job {job_id}, which is not one of your jobs")
    return job


def describe(job: dict, claimed: dict) -> dict:
    """What a version records of the ``job`` that produced it (the jobs service's view)."""
    jobs_api = f"services/jobs/api/jobs/{job['id']}"
    return {
        "job": job["id"], "attempt": int(claimed.get("attempt") or job["attempt"]),
        "owner": job["owner"], "notebook": job["path"], "parameters": job["parameters"],
        "input_notebook": f"{jobs_api}/input", "output_notebook": f"{jobs_api}/output",
        "sweep": job["group"], "schedule": job["schedule"],
        "datasets": job.get("datasets") or [],
    }
