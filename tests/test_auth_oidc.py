"""Company sign-in through OpenID Connect, end to end, against a real provider.

The provider is panva/node-oidc-provider (OpenID Certified), run here as a Node.js
process (``tests/idp/provider.mjs``) on a free port of 127.0.0.1: it has a sign-in form
that checks passwords, a consent page, and the accounts these tests write to its JSON
file (it reads the file again at each sign-in). Nothing is mocked:

- each test starts its own platform (``aidc up``) with the drop-in
  ``hub_config/auth_oidc.py`` and the ``AIDC_OIDC_*`` variables an operator would set;
- each platform listens on its own port, so it registers itself at the provider as a
  confidential client with its own redirect URI (OpenID Connect Dynamic Client
  Registration, as an administrator would register the hub at the company's provider);
- the "browser" is a ``requests.Session`` that follows redirects and fills in the
  provider's HTML forms.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import selectors
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import pytest
import requests

from platform_helpers import Platform, User, new_prefix, own_platform_drop_ins

TESTS = Path(__file__).parent
IDP_DIR = TESTS / "idp"
OIDC_CONFIG = (TESTS.parent / "hub_config" / "auth_oidc.py").read_text()
ROLE_GROUPS = "ml-admins=admin,data-science=scientist,stakeholders=viewer"


# --- the provider ---------------------------------------------------------------------
@dataclass
class Account:
    name: str
    password: str
    groups: list[str]
    sub: str = field(default_factory=lambda: "u-" + secrets.token_hex(6))

    def claims(self) -> dict:
        return {"sub": self.sub, "preferred_username": self.name,
                "email": f"{self.name}@example.com", "groups": self.groups,
                "password": self.password}


@dataclass
class IdP:
    issuer: str
    registration_token: str
    accounts_file: Path
    log_path: Path
    accounts: dict[str, Account] = field(default_factory=dict)

    def discovery(self) -> dict:
        r = requests.get(self.issuer + "/.well-known/openid-configuration", timeout=30)
        r.raise_for_status()
        return r.json()

    def register_client(self, redirect_uri: str) -> tuple[str, str]:
        """Register a confidential client (RFC 7591); returns its id and secret."""
        r = requests.post(
            self.discovery()["registration_endpoint"],
            json={"client_name": "aidc", "redirect_uris": [redirect_uri],
                  "grant_types": ["authorization_code"], "response_types": ["code"],
                  "token_endpoint_auth_method": "client_secret_post"},
            headers={"Authorization": f"Bearer {self.registration_token}"},
            timeout=30,
        )
        assert r.status_code == 201, (r.status_code, r.text)
        return r.json()["client_id"], r.json()["client_secret"]

    def add_account(self, *groups: str, tag: str = "u") -> Account:
        account = Account(f"{tag}{secrets.token_hex(3)}", secrets.token_urlsafe(12), list(groups))
        self.accounts[account.name] = account
        self._save()
        return account

    def set_groups(self, account: Account, *groups: str) -> None:
        account.groups = list(groups)
        self._save()

    def _save(self) -> None:
        tmp = self.accounts_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([a.claims() for a in self.accounts.values()], indent=1))
        os.replace(tmp, self.accounts_file)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first line the provider prints, or an error if it says nothing in time."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
        return proc.stdout.readline().decode()


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    install = subprocess.run([str(IDP_DIR / "install.sh")], capture_output=True, text=True,
                             timeout=600)
    assert install.returncode == 0, (
        f"tests/idp/install.sh failed:\n{install.stdout}{install.stderr}")

    work = tmp_path_factory.mktemp("idp")
    accounts_file = work / "accounts.json"
    accounts_file.write_text("[]")
    log_path = work / "provider.log"
    token = secrets.token_urlsafe(24)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["node", str(IDP_DIR / "provider.mjs"), "--port", "0",
             # one argument: a token that starts with "-" would read as an option
             "--accounts", str(accounts_file), f"--registration-token={token}"],
            cwd=IDP_DIR, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
        )
    try:
        line = _read_line(proc, timeout=60)
        assert line, f"the OpenID provider did not start:\n{log_path.read_text()}"
        provider = IdP(json.loads(line)["issuer"], token, accounts_file, log_path)
        provider.discovery()
        yield provider
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture(scope="module")
def company_platform(tmp_path_factory, idp) -> Platform:
    """A platform whose only way in is company sign-in at ``idp``, as an operator sets it up.

    One for the module: each test signs in with accounts of its own (and reads only its own
    audit events), so they share it as people of one company share their platform."""
    p = Platform(tmp_path_factory.mktemp("company") / "platform", prefix=new_prefix())
    own_platform_drop_ins(p.data_dir, OIDC_CONFIG, dask_at_start=False)  # no job runs here
    callback = p.url + "/hub/oauth_callback"
    client_id, client_secret = idp.register_client(callback)
    p.env.update(
        AIDC_OIDC_ISSUER=idp.issuer,
        AIDC_OIDC_CLIENT_ID=client_id,
        AIDC_OIDC_CLIENT_SECRET=client_secret,
        AIDC_OIDC_CALLBACK_URL=callback,
        AIDC_OIDC_ROLE_GROUPS=ROLE_GROUPS,
    )
    p.start()
    yield p
    p.stop()
    p.remove_users()


# --- a browser: follow redirects, fill in forms -------------------------------------------
@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[str] = field(default_factory=list)
    has_password: bool = False


class Page(HTMLParser):
    """The forms and links of an HTML page, with the text of their buttons and anchors."""

    def __init__(self, html: str):
        super().__init__()
        self.forms: list[Form] = []
        self.links: list[tuple[str, str]] = []
        self._form: Form | None = None
        self._text: list[str] | None = None
        self._href = ""
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = Form(a.get("action", ""), (a.get("method") or "get").lower())
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None:
            if a.get("name"):
                self._form.fields[a["name"]] = a.get("value", "")
            if a.get("type") == "password":
                self._form.has_password = True
        elif tag in ("a", "button"):
            self._text, self._href = [], a.get("href", "")

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag in ("a", "button") and self._text is not None:
            text = " ".join("".join(self._text).split())
            if tag == "a":
                self.links.append((text, self._href))
            elif self._form is not None:
                self._form.buttons.append(text)
            self._text = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def link(self, text: str) -> str:
        hrefs = [href for t, href in self.links if t == text]
        assert hrefs, f"no link {text!r} among {self.links}"
        return hrefs[0]

    def form(self, *, password: bool = False, button: str | None = None) -> Form:
        for f in self.forms:
            if (not password or f.has_password) and (button is None or button in f.buttons):
                return f
        raise AssertionError(f"no such form (password={password}, button={button!r}): {self.forms}")


def submit(s: requests.Session, r: requests.Response, form: Form, **values) -> requests.Response:
    assert form.method == "post", form
    return s.post(urljoin(r.url, form.action), data={**form.fields, **values}, timeout=60)


def company_sign_in(p: Platform, idp: IdP,
                    account: Account) -> tuple[requests.Session, requests.Response]:
    """What a person does: open the hub, choose company sign-in, sign in there, allow.

    Returns the browser session and the page the hub finally shows.
    """
    s = requests.Session()
    r = s.get(p.url + "/hub/home", timeout=30)
    assert urlparse(r.url).path == "/hub/login", r.url  # not signed in yet
    r = s.get(urljoin(r.url, Page(r.text).link("Sign in with company sign-in")), timeout=30)
    assert r.status_code == 200 and r.url.startswith(idp.issuer + "/interaction/"), (
        r.status_code, r.url, r.text[:2000], idp.log())
    r = submit(s, r, Page(r.text).form(password=True), login=account.name,
               password=account.password)
    assert r.status_code == 200, (r.status_code, r.url, r.text[:2000], idp.log())
    r = submit(s, r, Page(r.text).form(button="Allow"))
    return s, r


def hub_groups(p: Platform, name: str) -> list[str]:
    r = p.hub(p.token("admin"), "GET", f"/users/{name}")
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()["groups"]


def signs_in_as(p: Platform, account: Account, role: str) -> None:
    """Remove the hub user and Unix account made by ``account``'s first sign-in afterwards."""
    p.users.append(User(account.name, "", role))


def auth_events(p: Platform) -> list[dict]:
    return [e for e in p.audit_events() if e["__schema__"].endswith("/auth")]


# --- tests ---------------------------------------------------------------------------
def test_login_page_sends_people_to_the_company_provider(company_platform, idp):
    p = company_platform
    s = requests.Session()
    login = s.get(p.url + "/hub/login", timeout=30)
    assert login.status_code == 200
    href = Page(login.text).link("Sign in with company sign-in")
    assert urlparse(urljoin(login.url, href)).path == "/hub/oauth_login"

    r = s.get(p.url + "/hub/oauth_login", allow_redirects=False, timeout=30)
    assert r.status_code == 302, (r.status_code, r.text)
    location = urlparse(r.headers["Location"])
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    endpoint = idp.discovery()["authorization_endpoint"]
    assert location._replace(query="").geturl() == endpoint
    assert query["client_id"] == p.env["AIDC_OIDC_CLIENT_ID"]
    assert query["redirect_uri"] == p.url + "/hub/oauth_callback"
    assert query["response_type"] == "code"
    assert {"openid", "profile", "email"} <= set(query["scope"].split())
    assert query["state"]

    # the provider accepts the request: it asks the person to sign in
    r = s.get(r.headers["Location"], timeout=30)
    assert r.status_code == 200 and r.url.startswith(idp.issuer + "/interaction/"), (
        r.status_code, r.text[:2000])
    assert Page(r.text).form(password=True)


def test_data_scientist_signs_in_as_scientist(company_platform, idp):
    p = company_platform
    account = idp.add_account("data-science", "all-staff", tag="ds")
    signs_in_as(p, account, "scientist")

    s, r = company_sign_in(p, idp, account)
    assert r.status_code == 200, (r.status_code, r.url, r.text[:2000], p.log())
    assert r.url == p.url + "/hub/home"
    assert account.name in r.text
    assert s.get(p.url + "/hub/home", timeout=30).status_code == 200  # signed in

    assert hub_groups(p, account.name) == ["scientist"]
    if os.geteuid() == 0:
        unix = pwd.getpwnam(p.prefix + account.name)  # raises KeyError if missing
        assert Path(unix.pw_dir).is_dir()


def test_stakeholder_signs_in_as_viewer_and_cannot_start_a_server(company_platform, idp):
    p = company_platform
    account = idp.add_account("stakeholders", tag="sh")
    signs_in_as(p, account, "viewer")

    _, r = company_sign_in(p, idp, account)
    assert r.status_code == 200 and r.url == p.url + "/hub/home", (r.status_code, r.url, p.log())
    assert hub_groups(p, account.name) == ["viewer"]

    token = p.token(account.name)
    r = p.hub(token, "POST", f"/users/{account.name}/server")
    assert r.status_code == 403, (r.status_code, r.text)


def test_person_in_no_mapped_group_is_refused(company_platform, idp):
    p = company_platform
    account = idp.add_account("contractors", tag="ct")
    signs_in_as(p, account, "")  # removed afterwards in case the hub let them in
    before = len(auth_events(p))

    s, r = company_sign_in(p, idp, account)
    assert r.status_code == 403, (r.status_code, r.url, r.text[:2000])
    assert urlparse(r.url).path == "/hub/oauth_callback"
    assert s.get(p.url + "/hub/home", timeout=30).url.startswith(p.url + "/hub/login")

    assert p.hub(p.token("admin"), "GET", f"/users/{account.name}").status_code == 404
    if os.geteuid() == 0:
        with pytest.raises(KeyError):
            pwd.getpwnam(p.prefix + account.name)
    new = auth_events(p)[before:]
    assert [(e["action"], e["target"], e["result"]) for e in new] == [("login", "hub", "failure")]
    assert new[0]["remote_ip"] == "127.0.0.1"
    # admins see who was refused: the name the provider asserted
    assert new[0]["actor"] == account.name


def test_successful_sign_in_is_in_the_audit_log(company_platform, idp):
    p = company_platform
    account = idp.add_account("data-science", tag="au")
    signs_in_as(p, account, "scientist")

    started = time.time()
    _, r = company_sign_in(p, idp, account)
    assert r.status_code == 200, (r.status_code, r.url, p.log())

    events = [e for e in auth_events(p) if e["actor"] == account.name]
    assert [e["result"] for e in events] == ["success"]
    event = events[0]
    assert event["action"] == "login" and event["target"] == "hub"
    assert event["remote_ip"] == "127.0.0.1"
    assert event["__timestamp__"] and event["__schema_version__"] == "1"
    assert started - 5 < _epoch(event["__timestamp__"]) < time.time() + 5


def test_role_follows_provider_groups_at_each_sign_in(company_platform, idp):
    p = company_platform
    account = idp.add_account("data-science", tag="mv")
    signs_in_as(p, account, "scientist")
    _, r = company_sign_in(p, idp, account)
    assert r.status_code == 200, (r.status_code, r.url, p.log())
    assert hub_groups(p, account.name) == ["scientist"]

    # the company moves them to the stakeholders; their next sign-in makes them a viewer
    idp.set_groups(account, "stakeholders")
    _, r = company_sign_in(p, idp, account)
    assert r.status_code == 200, (r.status_code, r.url, p.log())
    assert hub_groups(p, account.name) == ["viewer"]


def _epoch(timestamp: str) -> float:
    """Seconds since the epoch of an event's ``__timestamp__`` (UTC, ISO 8601)."""
    moment = datetime.fromisoformat(timestamp.removesuffix("Z"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
