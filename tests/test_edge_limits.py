"""The nginx processes (the public edge, the gRPC front) get the open files they need.

One nginx process holds two descriptors per proxied connection; under systemd a service's
soft limit is 1,024, which would refuse a few hundred Lab users long before nginx's
``worker_connections``. :func:`aidc.nginx.before_exec` raises it, in the child, to the
hard limit (at most 65,536). The platform tests see the edge itself; this one starts a
child from a parent whose soft limit is systemd's."""

import resource
import subprocess
import sys


def test_nginx_children_get_the_hard_open_file_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > 1024, "this machine's hard limit leaves nothing to raise"

    def systemd_like():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    code = ("import resource; from aidc import nginx; "
            "before = resource.getrlimit(resource.RLIMIT_NOFILE)[0]; nginx.before_exec(); "
            "print(before, resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([sys.executable, "-c", code], preexec_fn=systemd_like,
                         capture_output=True, text=True, check=True).stdout.split()
    want = hard if hard != resource.RLIM_INFINITY else 65536
    assert [int(x) for x in out] == [1024, min(want, 65536)]
