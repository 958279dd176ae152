"""Models: a versioned registry with lineage, and v2 (KServe) inference endpoints.

From a notebook::

    import aidc
    v = aidc.models.register(model, name="mnist", example=x[:1], metrics={"accuracy": 0.99})
    aidc.models.deploy("mnist", version=v.version)
    aidc.models.predict("mnist", x[:8])

The client side is this package's top level (HTTP only). The service side is
:mod:`aidc.models.service` (registry API and v2 routes), :mod:`~aidc.models.registry`
(the tables), :mod:`~aidc.models.deployments` (replicas, health, traffic split),
:mod:`~aidc.models.server` (one model-server process), :mod:`~aidc.models.formats` and
:mod:`~aidc.models.signature` (TorchScript, Keras, ONNX; tensor signatures) and
:mod:`~aidc.models.export` (Triton model repositories).
"""

# The client is imported on first use (PEP 562), not with the package: a model replica
# (aidc.models.server) and the models service import submodules of this package and need
# none of the client's HTTP stack (requests, urllib3), which was a fifth of a replica's
# imports before the model's framework, i.e. of a deployment's cold start.
__all__ = ["Deployment", "ModelVersion", "deploy", "deployment", "get", "list_models", "predict",
           "promote", "register", "rollback", "set_alias", "undeploy"]


def __getattr__(name: str):
    if name in __all__ or name == "client":  # aidc.models.client itself too (the CLI reads its API)
        import importlib

        client = importlib.import_module(f"{__name__}.client")  # not `from . import`: it asks here first
        return client if name == "client" else getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
