"""API tokens for running jobs: a job's kernel acts as its owner, for what jobs need.

A notebook that registers a model or submits a follow-up job calls the platform as its
owner. The kernel never gets the service's token (:func:`aidc.jobs.execute.kernel_env`
builds its environment from scratch); instead, for each attempt, the jobs service asks
the hub for a new token *of the owner* with only the scopes listed in
:attr:`JobTokens.scopes` and a lifetime bounded by the job's time-out, and revokes it
when the attempt ends. The hub refuses scopes the owner does not hold, so a job can
never do more than its owner could.

The token's note names the job (``aidc job <id>``), so tokens a crashed service could
not revoke are found and revoked when the job is recovered, and an admin sees in the
hub's token page which job a token belongs to.

The token travels to the worker in the Dask task's arguments. With the embedded cluster
that never leaves the machine; with an external scheduler, protect the cluster's network
with Dask's TLS settings (``distributed.comm.tls``) as for any data the jobs read.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from traitlets import Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from ..errors import AidcError, NotFoundError
from ..hubapi import HubAPI

NOTE_PREFIX = "aidc job "


class JobTokens(LoggingConfigurable):
    """Mints and revokes the per-attempt hub tokens of jobs."""

    scopes = List(
        Unicode(),
        default_value=[
            "access:services!service=models",
            "access:services!service=jobs",
            "access:services!service=data",
            "access:services!service=resources",
            "read:users:name!user",
            "read:users:groups!user",
        ],
        help="""Hub scopes of a job's token (the kernel's ``AIDC_TOKEN``).

        By default a job may use the models, jobs, data and resources services as its owner
        (register a model with lineage, submit or watch jobs, read datasets, see its GPUs with
        ``aidc.gpus()``) and read its owner's name and groups, nothing else: it cannot start
        servers or make tokens. An empty list runs jobs
        without any token.""",
    ).tag(config=True)

    max_lifetime = Integer(
        7 * 24 * 3600,
        help="""Seconds a job token lives at most (jobs without a time-out).

        A job with a time-out gets a token for that time plus :attr:`grace`. The token is
        revoked as soon as the attempt ends either way.""",
    ).tag(config=True)

    grace = Integer(600, help="Seconds a token outlives its job's time-out.").tag(config=True)

    hub_api = Unicode(
        help="The hub's REST API (default: ``JUPYTERHUB_API_URL`` of the service).",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._service_token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not self.hub_api:
            self.hub_api = os.environ.get("JUPYTERHUB_API_URL", "")

    @property
    def enabled(self) -> bool:
        return bool(self.scopes and self.hub_api and self._service_token)

    async def _call(self, method: str, path: str, body: dict | None = None) -> dict | None:
        return await HubAPI(self.hub_api, self._service_token, timeout=30).fetch(method, path, body)

    async def mint(self, owner: str, job_id: str, attempt: int, timeout: float | None) -> str | None:
        """A new token of ``owner`` for this attempt; ``None`` (logged) when the hub says no."""
        if not self.enabled:
            return None
        lifetime = self.max_lifetime
        if timeout:
            lifetime = min(lifetime, int(timeout) + self.grace)
        try:
            model = await self._call("POST", f"/users/{quote(owner)}/tokens", {
                "note": f"{NOTE_PREFIX}{job_id} attempt {attempt}",
                "expires_in": lifetime,
                "scopes": list(self.scopes),
            })
        except AidcError as e:
            self.log.warning("aidc jobs: no API token for job %s (%s); "
                             "it runs without one", job_id, e)
            return None
        return model["token"]

    async def revoke(self, owner: str, job_id: str) -> int:
        """Revoke every token of ``owner`` made for job ``job_id``; returns how many."""
        if not self.enabled:
            return 0
        revoked = 0
        try:
            listing = await self._call("GET", f"/users/{quote(owner)}/tokens")
            for token in (listing or {}).get("api_tokens", []):
                note = token.get("note") or ""
                if note == f"{NOTE_PREFIX}{job_id}" or note.startswith(f"{NOTE_PREFIX}{job_id} "):
                    await self._call("DELETE", f"/users/{quote(owner)}/tokens/{token['id']}")
                    revoked += 1
        except NotFoundError:
            pass  # the owner was deleted: their tokens went with them
        except AidcError as e:
            self.log.warning("aidc jobs: could not revoke the tokens of job %s: %s", job_id, e)
        return revoked
