#!/usr/bin/env bash
# Install what tests/test_auth_ldap.py needs from Debian: OpenLDAP's server (slapd, whose
# `slapd` and `slappasswd` the test runs itself on a free 127.0.0.1 port) and its client
# tools (ldap-utils: ldapsearch/ldapadd, handy when debugging the test directory).
#
# Idempotent: does nothing (and touches no network) when both are already installed.
# Non-interactive: debconf is preseeded so slapd's postinst asks nothing. The distro's own
# slapd service is neither needed nor started by the tests; where the postinst starts it
# anyway (port 389), the tests do not depend on it or conflict with it.
set -euo pipefail

PACKAGES=(slapd ldap-utils)

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "the LDAP tests need: ${missing[*]} (apt-get install ${missing[*]}, as root)" >&2
  exit 1
fi
command -v apt-get >/dev/null || { echo "apt-get not found; install: ${missing[*]}" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
# Answer slapd's questions up front: skip the initial configuration (no system database,
# no admin password to choose); the tests bring their own throw-away config.
if command -v debconf-set-selections >/dev/null; then
  debconf-set-selections <<'SEL'
slapd slapd/no_configuration boolean true
slapd shared/organization string example
slapd slapd/domain string example.com
slapd slapd/password1 password
slapd slapd/password2 password
slapd slapd/purge_database boolean false
slapd slapd/move_old_database boolean true
SEL
fi

# In containers without an init system, keep the postinst from starting the service.
policy=/usr/sbin/policy-rc.d
made_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  made_policy=yes
fi
cleanup() { [ -z "$made_policy" ] || rm -f "$policy"; }
trap cleanup EXIT

apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${missing[@]}" >/dev/null
