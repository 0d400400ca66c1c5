"""deploy/kubernetes/: every manifest validates against the Kubernetes schemas (kubernetes-validate),
KEDA's ScaledObjects have the fields KEDA requires, and they scale the workers on their own queues."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from producer.registry import load_registry
from producer.wire import PRIORITY_STEPS, redis_list

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="the dev extra installs kubernetes-validate")

MANIFESTS = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"


def _documents() -> list[dict[str, Any]]:
    docs = [doc for path in sorted(MANIFESTS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs, f"no manifests in {MANIFESTS}"
    return docs


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _documents() if doc["kind"] == kind]


@pytest.mark.parametrize("doc", [d for d in _documents() if d["kind"] != "ScaledObject"],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_manifest_is_valid_kubernetes(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schemas_catch_a_broken_manifest() -> None:
    broken = {**_of_kind("Service")[0], "spec": {"ports": [{"port": "eighty"}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_workers_request_a_gpu_and_probe_with_worker_check_and_the_gateway_with_readyz() -> None:
    workers = [d for d in _of_kind("Deployment") if d["metadata"]["name"].startswith("textq-worker-")]
    assert len(workers) >= 2
    for deployment in workers:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert container["livenessProbe"]["exec"]["command"] == ["textq", "worker", "--check"]
    gateway = next(d for d in _of_kind("Deployment") if d["metadata"]["name"] == "textq-gateway")
    assert gateway["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert [j["spec"]["template"]["spec"]["containers"][0]["command"] for j in _of_kind("Job")] == [["textq", "db", "upgrade"]]


def test_each_scaled_object_is_well_formed_and_watches_every_priority_list_of_its_workers_models() -> None:
    deployments = {d["metadata"]["name"]: d for d in _of_kind("Deployment")}
    known_models = set(load_registry(None).names())
    scaled = _of_kind("ScaledObject")
    assert scaled
    for obj in scaled:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert obj["metadata"]["name"]
        spec = obj["spec"]
        assert set(spec) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod",
                             "idleReplicaCount", "triggers", "advanced", "fallback"}
        target = deployments[spec["scaleTargetRef"]["name"]]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        command = target["spec"]["template"]["spec"]["containers"][0]["command"]
        models = command[command.index("--models") + 1].split(",")
        assert set(models) <= known_models
        lists = set()
        for trigger in spec["triggers"]:
            assert trigger["type"] == "redis"
            meta = trigger["metadata"]
            assert {"address", "listName", "listLength"} <= set(meta)
            assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
            assert int(meta["listLength"]) > 0
            lists.add(meta["listName"])
        assert lists == {redis_list(f"textq.{m}", step) for m in models for step in PRIORITY_STEPS}
