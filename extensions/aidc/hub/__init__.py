"""The JupyterHub side of aidc: roles, authentication, spawners, services, hub config."""
