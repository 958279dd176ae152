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

from .client import (
    Deployment,
    ModelVersion,
    deploy,
    deployment,
    get,
    list_models,
    predict,
    promote,
    register,
    rollback,
    set_alias,
    undeploy,
)

__all__ = ["Deployment", "ModelVersion", "deploy", "deployment", "get", "list_models", "predict",
           "promote", "register", "rollback", "set_alias", "undeploy"]
