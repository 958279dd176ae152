"""Company sign-in with OpenID Connect (Keycloak, Entra ID, Okta, Google Workspace, ...).

Use: copy this file to `<data-dir>/config.d/10-auth.py` (or set AIDC_* variables and
symlink it), register the hub at your identity provider with the redirect URI
`<public URL>/hub/oauth_callback`, and restart `aidc up`.

    AIDC_OIDC_ISSUER          issuer URL; endpoints come from its discovery document
    AIDC_OIDC_CLIENT_ID       client id registered at the provider
    AIDC_OIDC_CLIENT_SECRET   its secret
    AIDC_OIDC_CALLBACK_URL    default http://127.0.0.1:8000/hub/oauth_callback
    AIDC_OIDC_SCOPES          default "openid profile email"; add "groups" for providers
                              (Okta, ...) that send the groups claim only for that scope
    AIDC_OIDC_ROLE_GROUPS     provider group -> aidc role, e.g.
                              "ml-admins=admin,data-science=scientist,stakeholders=viewer"

With AIDC_OIDC_ROLE_GROUPS, a person's role follows their provider groups at every
sign-in and people in none of them are refused; without it, anyone the provider
accepts signs in with no role until an admin runs `aidc user set-role NAME ROLE`.
As root, each person gets a Unix account `jupyter-<name>` at first sign-in (without a
password: only the provider can sign them in).
"""

import os

c = get_config()  # noqa: F821

c.JupyterHub.authenticator_class = "aidc.hub.auth.CompanyOIDCAuthenticator"
c.CompanyOIDCAuthenticator.oidc_issuer = os.environ["AIDC_OIDC_ISSUER"]
c.CompanyOIDCAuthenticator.client_id = os.environ["AIDC_OIDC_CLIENT_ID"]
c.CompanyOIDCAuthenticator.client_secret = os.environ["AIDC_OIDC_CLIENT_SECRET"]
c.CompanyOIDCAuthenticator.oauth_callback_url = os.environ.get(
    "AIDC_OIDC_CALLBACK_URL", "http://127.0.0.1:8000/hub/oauth_callback"
)
if os.environ.get("AIDC_OIDC_SCOPES"):
    c.CompanyOIDCAuthenticator.scope = os.environ["AIDC_OIDC_SCOPES"].split()
role_groups = os.environ.get("AIDC_OIDC_ROLE_GROUPS", "")
if role_groups:
    c.CompanyOIDCAuthenticator.role_groups = dict(
        pair.split("=", 1) for pair in role_groups.split(",") if "=" in pair
    )
else:
    c.CompanyOIDCAuthenticator.allow_all = True
