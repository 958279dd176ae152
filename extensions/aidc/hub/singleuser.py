"""The user server's command: ``jupyterhub-singleuser``, without JupyterLab's yarn probe.

When ``jupyterlab.labapp`` is imported (every server start), JupyterLab runs
``node yarn.js config --json`` to learn which npm registry to use: a Node.js process that
costs about 0.6 s of CPU before the server can answer, on every spawn, on every node that
has Node.js. The registry only matters for building or installing source extensions from
npm, which a platform user server never does: its labextensions, aidc's included, come
prebuilt in the environment. So the user server answers that question with yarn's defaults
instead of asking Node.js; everything else is ``jupyterhub-singleuser`` unchanged.
"""

from __future__ import annotations


def skip_yarn_probe() -> bool:
    """Make JupyterLab's yarn-configuration probe answer "defaults" without running Node.js.

    Returns whether the probe was found (a JupyterLab without it needs nothing).
    """
    try:
        from jupyterlab import commands
    except ImportError:
        return False
    if not callable(getattr(commands, "_yarn_config", None)):
        return False

    def defaults(logger=None) -> dict:
        # the shape _yarn_config returns when it finds no configuration
        return {"yarn config": {}, "npm config": {}}

    commands._yarn_config = defaults
    return True


def main() -> None:
    import sys

    skip_yarn_probe()
    from jupyterhub.singleuser import main as singleuser_main

    sys.exit(singleuser_main())


if __name__ == "__main__":
    main()
