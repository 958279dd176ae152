"""Company sign-in against an LDAP directory (OpenLDAP, Active Directory), via ldapauthenticator.

Use: copy this file to `<data-dir>/config.d/10-auth.py`, set the variables below and
restart `aidc up`.

    AIDC_LDAP_SERVER          host name of the directory server
    AIDC_LDAP_PORT            default 389 (636 with AIDC_LDAP_TLS=on_connect)
    AIDC_LDAP_TLS             before_bind (default, StartTLS), on_connect (LDAPS) or
                              insecure (no TLS: only for a directory on this host)
    AIDC_LDAP_BIND_TEMPLATE   DN of a user, e.g. "uid={username},ou=people,dc=example,dc=com"
                              (several templates separated by ";")
    AIDC_LDAP_ALLOWED_GROUPS  optional; DNs of groups whose members may sign in (";"-separated)

People sign in with their directory password; aidc never sees it stored. Roles are set
with `aidc user set-role NAME ROLE` (users without a role can sign in but not start a
server). As root, each person gets a Unix account `jupyter-<name>` at first sign-in.
"""

import os

c = get_config()  # noqa: F821

c.JupyterHub.authenticator_class = "aidc.hub.auth.CompanyLDAPAuthenticator"
c.LDAPAuthenticator.server_address = os.environ["AIDC_LDAP_SERVER"]
c.LDAPAuthenticator.tls_strategy = os.environ.get("AIDC_LDAP_TLS", "before_bind")
if os.environ.get("AIDC_LDAP_PORT"):
    c.LDAPAuthenticator.server_port = int(os.environ["AIDC_LDAP_PORT"])
c.LDAPAuthenticator.bind_dn_template = os.environ["AIDC_LDAP_BIND_TEMPLATE"].split(";")
groups = os.environ.get("AIDC_LDAP_ALLOWED_GROUPS", "")
if groups:
    c.LDAPAuthenticator.allowed_groups = groups.split(";")
else:
    c.LDAPAuthenticator.allow_all = True
