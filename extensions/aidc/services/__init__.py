"""Hub-managed services of the platform; :mod:`aidc.services.base` is what they build on."""
