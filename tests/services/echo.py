"""A minimal hub-managed service built on aidc.services.base, used by test_services.py.

It shows the three things a platform service gets from the hub: its own API token
(``/api/users-count`` calls the hub with it), token auth for API callers and OAuth for
browsers (``/api/whoami`` and ``/``).
"""

import os

import requests

from aidc.errors import UsageError
from aidc.services.base import ServiceHandler, authenticated, run_service


class WhoAmI(ServiceHandler):
    @authenticated
    def get(self):
        self.write_json({"name": self.user_name, "kind": self.current_user["kind"]})


class Page(ServiceHandler):
    @authenticated
    def get(self):
        self.finish(f"<html><body><h1>Hello {self.user_name}</h1></body></html>")


class UsersCount(ServiceHandler):
    """Uses the service's own hub token (scope list:users) to count the hub's users."""

    @authenticated
    def get(self):
        r = requests.get(
            os.environ["JUPYTERHUB_API_URL"] + "/users",
            headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]},
            timeout=30,
        )
        r.raise_for_status()
        self.write_json({"users": len(r.json())})


class Echo(ServiceHandler):
    @authenticated
    def post(self):
        body = self.json_body()
        if "text" not in body:
            raise UsageError("missing field 'text'")
        self.write_json({"text": body["text"]})


if __name__ == "__main__":
    run_service([
        (r"/?", Page),
        (r"/api/whoami", WhoAmI),
        (r"/api/users-count", UsersCount),
        (r"/api/echo", Echo),
    ])
