"""The inventory reads GPUs through the pynvml boundary (a fake NVML here) or simulates them."""

import json
import os
import subprocess
import sys
from pathlib import Path

FAKE = str(Path(__file__).parent / "fake_nvml")

LAYOUT = [
    {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559, "utilization": 37},
    {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559},
    {"name": "NVIDIA A100-SXM4-40GB", "memory_mb": 40960, "mig": [
        {"name": "MIG 3g.20gb", "memory_mb": 19968}, {"name": "MIG 3g.20gb", "memory_mb": 19968}]},
]


def inventory_in_subprocess(tmp_path, layout=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "AIDC_FAKE_NVML"}
    env["PYTHONPATH"] = FAKE
    if layout is not None:
        path = tmp_path / "gpus.json"
        path.write_text(json.dumps(layout))
        env["AIDC_FAKE_NVML"] = str(path)
    code = "import json; from aidc.gpu.inventory import detect; print(json.dumps(detect(3).to_dict()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_nvml_gpus_and_mig_instances_become_units(tmp_path):
    inv = inventory_in_subprocess(tmp_path, LAYOUT)
    assert inv["simulated"] is False and inv["source"] == "nvml"
    assert [d["name"] for d in inv["devices"]] == [g["name"] for g in LAYOUT]
    assert inv["devices"][0]["utilization_pct"] == 37
    assert inv["devices"][2]["mig_enabled"] is True
    units = inv["units"]
    assert [(u["id"], u["kind"], u["visible_id"]) for u in units] == [
        ("gpu0", "whole", "GPU-fake-0000"),
        ("gpu1", "whole", "GPU-fake-0001"),
        ("gpu2/mig0", "mig", "MIG-fake-02-0"),
        ("gpu2/mig1", "mig", "MIG-fake-02-1"),
    ]
    assert not any(u["simulated"] for u in units)


def test_no_driver_means_a_labelled_simulation(tmp_path):
    inv = inventory_in_subprocess(tmp_path, None)
    assert inv["simulated"] is True and inv["source"] == "simulated"
    assert len(inv["devices"]) == 3
    assert all(u["simulated"] and "simulated" in u["visible_id"] for u in inv["units"])
