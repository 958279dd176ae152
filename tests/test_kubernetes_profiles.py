"""The Kubernetes profile list: generated from the same profiles, read by the real KubeSpawner.

No cluster is needed: KubeSpawner is built the way its own tests build one (``_mock=True``),
with a kubeconfig naming an address that is never contacted, and only its offline
machinery runs: ``load_user_options`` (profile selection) and ``get_pod_manifest``.
The values are loaded into KubeSpawner the way the z2jh chart's jupyterhub_config.py does
(``singleuser.profileList`` -> ``KubeSpawner.profile_list``, the chart's user-pod
tolerations -> ``KubeSpawner.tolerations``, ``singleuser.image`` -> ``KubeSpawner.image``).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from traitlets.config import Config

from aidc.errors import UsageError
from aidc.gpu.profiles import DEFAULT_PROFILES, ResourceProfile
from aidc.hub import kubernetes
from aidc.paths import project_root

VALUES_FILE = project_root() / "hub_config" / "kubernetes" / "values.yaml"
GIB = 2**30

#: a kubeconfig that satisfies KubeSpawner's constructor; nothing connects to it
FAKE_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: offline
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: offline
  user: {token: "not-a-token"}
contexts:
- name: offline
  context: {cluster: offline, user: offline, namespace: aidc}
current-context: offline
"""

# what each default profile must ask Kubernetes for, besides CPU and memory
EXPECTED_GPU_RESOURCES = {
    "cpu": {},
    "gpu-1": {"nvidia.com/gpu": "1"},
    "gpu-2": {"nvidia.com/gpu": "2"},
    "mig-1": {kubernetes.DEFAULT_MIG_RESOURCE: "1"},
    "share-1": {kubernetes.DEFAULT_SHARE_RESOURCE: "1"},
}
GPU_RESOURCE_NAMES = {name for expected in EXPECTED_GPU_RESOURCES.values() for name in expected}


@pytest.fixture
def offline_kubeconfig(tmp_path, monkeypatch):
    """Point kubernetes_asyncio at a kubeconfig for a cluster that is never contacted."""
    from kubernetes_asyncio.config import kube_config

    from kubespawner import clients

    path = tmp_path / "kubeconfig"
    path.write_text(FAKE_KUBECONFIG)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not "in cluster"
    # read at import time by kubernetes_asyncio, so patch the module's value
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    clients.load_config.cache_clear()
    yield path
    clients.load_config.cache_clear()


@pytest.fixture(scope="module")
def committed_values() -> dict:
    return yaml.safe_load(VALUES_FILE.read_text())


def z2jh_config(values: dict) -> Config:
    """The KubeSpawner config the z2jh chart derives from these values (and its defaults)."""
    c = Config()
    c.KubeSpawner.profile_list = values["singleuser"]["profileList"]
    image = values["singleuser"]["image"]
    c.KubeSpawner.image = f"{image['name']}:{image['tag']}"
    # the chart's default scheduling.userPods.tolerations
    c.KubeSpawner.tolerations = [dict(t) for t in kubernetes.Z2JH_USER_POD_TOLERATIONS]
    return c


async def pod_for(config: Config, slug: str | None):
    """Select a profile through KubeSpawner's own machinery and build its pod."""
    from kubespawner import KubeSpawner

    spawner = KubeSpawner(_mock=True, config=config)
    spawner.user_options = {"profile": slug} if slug else {}
    await spawner.load_user_options()
    return spawner, await spawner.get_pod_manifest()


def notebook_container(pod):
    (container,) = [c for c in pod.spec.containers if c.name == "notebook"]
    return container


# -- the committed file --------------------------------------------------------------


def test_committed_values_match_the_profiles():
    """hub_config/kubernetes/values.yaml is exactly what the generator writes now."""
    expected = kubernetes.render(DEFAULT_PROFILES)
    assert VALUES_FILE.read_text() == expected, (
        "hub_config/kubernetes/values.yaml is out of date: run `python -m aidc.hub.kubernetes`"
    )


def test_values_use_only_what_the_platform_decides(committed_values):
    assert set(committed_values) == {"hub", "singleuser", "cull"}
    assert committed_values["cull"] == {"enabled": True, "timeout": 3600, "every": 600}
    # the chart's default DummyAuthenticator lets anyone in; ours lets nobody in until set
    assert committed_values["hub"]["config"]["JupyterHub"]["authenticator_class"] == "null"
    slugs = [p["slug"] for p in committed_values["singleuser"]["profileList"]]
    assert slugs == [p.id for p in DEFAULT_PROFILES]
    # the chart's NetworkPolicies are what isolates servers in the cluster (z2jh has no
    # internal_ssl): nothing here may loosen them
    for part in ("hub", "singleuser"):
        assert "networkPolicy" not in committed_values[part]


def test_module_regenerates_the_file(tmp_path):
    out = tmp_path / "values.yaml"
    command = [sys.executable, "-m", "aidc.hub.kubernetes", "-o", str(out)]
    subprocess.run(command, check=True, capture_output=True)
    assert out.read_text() == VALUES_FILE.read_text()


def test_profiles_json_and_resource_names(tmp_path):
    profiles = tmp_path / "profiles.json"
    profiles.write_text(
        '[{"id": "mig-small", "display_name": "small MIG", "description": "1g.10gb",'
        ' "gpus": 1, "gpu_kind": "mig", "cpu_cores": 1.5, "memory_gb": 6.5, "default": true}]'
    )
    out = tmp_path / "values.yaml"
    subprocess.run(
        [sys.executable, "-m", "aidc.hub.kubernetes", "--profiles-json", str(profiles),
         "--mig-resource", "nvidia.com/mig-1g.10gb", "-o", str(out)],
        check=True, capture_output=True,
    )
    text = out.read_text()
    assert "--profiles-json" in text.split("hub:")[0]  # the header says how it was made
    (entry,) = yaml.safe_load(text)["singleuser"]["profileList"]
    override = entry["kubespawner_override"]
    assert override["extra_resource_limits"] == {"nvidia.com/mig-1g.10gb": "1"}
    assert override["cpu_limit"] == 1.5
    assert override["mem_limit"] == "6656M"


def test_bad_declarations_are_refused_with_a_reason(tmp_path):
    with pytest.raises(UsageError, match="gpu_kind"):
        kubernetes.profile_list([ResourceProfile("x", "X", "", 1, "vgpu")])
    with pytest.raises(UsageError, match="declared twice"):
        kubernetes.profile_list([DEFAULT_PROFILES[0], DEFAULT_PROFILES[0]])
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "x", "display_name": "X", "description": "", "gpu": 1}]')
    result = subprocess.run(
        [sys.executable, "-m", "aidc.hub.kubernetes", "--profiles-json", str(bad), "-o", "-"],
        capture_output=True, text=True,
    )
    assert result.returncode == UsageError.exit_code
    assert result.stderr.startswith("aidc: error:") and "gpu" in result.stderr
    assert "Traceback" not in result.stderr


# -- the real KubeSpawner ------------------------------------------------------------


@pytest.mark.parametrize("profile", DEFAULT_PROFILES, ids=lambda p: p.id)
async def test_kubespawner_builds_each_profiles_pod(profile, committed_values, offline_kubeconfig):
    _, pod = await pod_for(z2jh_config(committed_values), profile.id)
    container = notebook_container(pod)
    limits = container.resources.limits
    requests = container.resources.requests

    assert limits["cpu"] == requests["cpu"] == profile.cpu_cores
    assert limits["memory"] == requests["memory"] == int(profile.memory_gb * GIB)
    gpu_limits = {k: v for k, v in limits.items() if k in GPU_RESOURCE_NAMES}
    gpu_requests = {k: v for k, v in requests.items() if k in GPU_RESOURCE_NAMES}
    assert gpu_limits == gpu_requests == EXPECTED_GPU_RESOURCES[profile.id]

    env = {e.name: e.value for e in container.env}
    assert env["AIDC_PROFILE"] == profile.id
    assert container.image == "quay.io/jupyter/minimal-notebook:latest"
    tolerations = [t.to_dict() if hasattr(t, "to_dict") else t for t in pod.spec.tolerations]
    keys = {t["key"] for t in tolerations}
    # the chart's own user-pod tolerations survive the profile's override
    assert {"hub.jupyter.org/dedicated", "hub.jupyter.org_dedicated"} <= keys
    if profile.gpus:
        assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
        assert "nvidia.com/gpu" in keys
        assert "NVIDIA_VISIBLE_DEVICES" not in env  # the device plugin sets it
    else:
        assert not pod.spec.node_selector
        assert "nvidia.com/gpu" not in keys
        assert env["NVIDIA_VISIBLE_DEVICES"] == "void"


async def test_kubespawner_uses_the_default_profile(committed_values, offline_kubeconfig):
    _, pod = await pod_for(z2jh_config(committed_values), None)
    (default,) = [p for p in DEFAULT_PROFILES if p.default]
    limits = notebook_container(pod).resources.limits
    assert limits["cpu"] == default.cpu_cores
    assert not GPU_RESOURCE_NAMES & set(limits)


async def test_kubespawner_refuses_an_unknown_profile(committed_values, offline_kubeconfig):
    with pytest.raises(ValueError, match="No such profile: gpu-99"):
        await pod_for(z2jh_config(committed_values), "gpu-99")


async def test_kubespawner_form_offers_every_profile(committed_values, offline_kubeconfig):
    from kubespawner import KubeSpawner

    spawner = KubeSpawner(_mock=True, config=z2jh_config(committed_values))
    form = spawner.options_form  # the form JupyterHub shows (KubeSpawner's own template)
    for p in DEFAULT_PROFILES:
        assert f'value="{p.id}"' in form
        assert p.display_name in form
    assert spawner.options_from_form({"profile": ["gpu-2"]}) == {"profile": "gpu-2"}
