"""JupyterHub configuration of the one-machine platform (what `aidc up` runs).

Defaults come from aidc.hub.config.configure(), driven by the options of `aidc up`.
Site changes belong in drop-in files `<data-dir>/config.d/*.py` (loaded last, in name
order), which may also register services with aidc.hub.services.register().
Company sign-in examples: hub_config/auth_oidc.py and hub_config/auth_ldap.py.
"""

from aidc.hub import config as aidc_config

c = get_config()  # noqa: F821 - provided by JupyterHub

options = aidc_config.configure(c)
aidc_config.load_drop_ins(c, options.data_dir, load_subconfig)  # noqa: F821
aidc_config.finalize(c, options)  # services (built-in and drop-in) and roles
