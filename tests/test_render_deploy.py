"""OUT/deploy/: the NIM Operator's NIMCache and NIMService, checked against the operator's own CRD schemas,
and KServe InferenceServices, checked with the kubernetes client's models (the predictor's pod spec) and
the fields of KServe's Go types.

The CRDs are NVIDIA's (../shared/ref/nim-operator/, copied from github.com/NVIDIA/k8s-nim-operator);
their OpenAPI v3 schemas are made strict here (an object with `properties` takes no other key unless
it preserves unknown fields), as `kubectl apply --validate=strict` is: a misspelled field fails
instead of being pruned silently.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import yaml

from nimbuild import skus
from nimbuild.render import deploy

sys.path.insert(0, str(Path(__file__).parent))
from render_support import build_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REF = REPO.parent / "shared" / "ref" / "nim-operator"


def _crd_schema(name: str) -> dict:
    path = REF / f"apps.nvidia.com_{name}.yaml"
    if not path.is_file():
        pytest.skip(f"{path} is absent (NVIDIA's CRDs sit beside a checkout in ../shared/ref/nim-operator)")
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def _strict(schema):
    if isinstance(schema, dict):
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


def _errors(doc: dict, schema: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A manifest with H100 and L40S engines, ONNX GPU and CPU profiles, rendered with its deploy/ folder."""
    from nimbuild.render.triton import render_all

    root = tmp_path_factory.mktemp("deploy") / "exp"
    manifest_path = build_manifest(root, engines=("h100-sxm", "l40s"))
    result = render_all(manifest_path, root, deploy={"image": "registry.example/rerank:1.2.3"})
    docs = {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in result.deploy}
    return manifest_path, docs


def test_every_file_is_rendered(rendered):
    _, docs = rendered
    assert set(docs) == set(deploy.FILES)
    assert [d["kind"] for d in docs["nimcache.yaml"]] == ["NIMCache", "NIMCache"]
    assert [d["kind"] for d in docs["nimservice.yaml"]] == ["NIMService", "NIMService"]


def test_nimcache_validates_against_the_operators_crd_and_caches_by_profile_id(rendered):
    from nimbuild.manifest import load_manifest

    manifest_path, docs = rendered
    manifest = load_manifest(manifest_path)
    schema = _crd_schema("nimcaches")
    for doc in docs["nimcache.yaml"]:
        assert _errors(doc, schema) == []
        # the operator's NGC path: its job runs `download-to-cache --profiles ID...` (the cache layout serve
        # reads); a modelEndpoint would make it run create-model-store, a Triton store serve does not use
        assert "modelEndpoint" not in doc["spec"]["source"]["ngc"]
    gpu, cpu = docs["nimcache.yaml"]
    by_device = {d: sorted(p.id for p in manifest.profiles if p.tags["device"] == d) for d in ("gpu", "cpu")}
    assert gpu["spec"]["source"]["ngc"]["model"]["profiles"] == by_device["gpu"]
    assert cpu["spec"]["source"]["ngc"]["model"]["profiles"] == by_device["cpu"]
    assert gpu["spec"]["source"]["ngc"]["modelPuller"] == "registry.example/rerank:1.2.3"
    assert cpu["spec"]["source"]["ngc"]["modelPuller"] == "registry.example/rerank:1.2.3-cpu"
    assert gpu["spec"]["storage"]["pvc"]["volumeAccessMode"] == "ReadWriteMany"


def test_nimservice_validates_and_scales_on_the_queue_depth(rendered):
    _, docs = rendered
    schema = _crd_schema("nimservices")
    for doc in docs["nimservice.yaml"]:
        assert _errors(doc, schema) == []
    gpu, cpu = docs["nimservice.yaml"]
    assert gpu["spec"]["image"] == {
        "repository": "registry.example/rerank",
        "tag": "1.2.3",
        "pullPolicy": "IfNotPresent",
    }
    assert gpu["spec"]["storage"]["nimCache"]["name"] == docs["nimcache.yaml"][0]["metadata"]["name"]
    assert gpu["spec"]["expose"]["service"]["port"] == 8000
    assert gpu["spec"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in cpu["spec"]["resources"]["limits"]
    metric = gpu["spec"]["scale"]["hpa"]["metrics"][0]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "nimbuild_queue_depth"
    # ONNX GPU profiles run on any GPU: required = some GPU, preferred = the engines' SKUs
    node = gpu["spec"]["affinity"]["nodeAffinity"]
    products = {skus.lookup("h100-sxm").gfd_product, skus.lookup("l40s").gfd_product}
    assert node["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "nvidia.com/gpu.product", "operator": "Exists"}
    ]
    assert (
        set(node["preferredDuringSchedulingIgnoredDuringExecution"][0]["preference"]["matchExpressions"][0]["values"])
        == products
    )


def test_the_strict_crd_check_is_live(rendered):
    """A misspelled field, a wrong type and a missing required field are each reported."""
    _, docs = rendered
    schema = _crd_schema("nimservices")
    bad = copy.deepcopy(docs["nimservice.yaml"][0])
    bad["spec"]["storage"]["nimCahce"] = bad["spec"]["storage"].pop("nimCache")
    assert any("nimCahce" in e for e in _errors(bad, schema))
    bad = copy.deepcopy(docs["nimservice.yaml"][0])
    bad["spec"]["replicas"] = "two"
    assert _errors(bad, schema)
    bad = copy.deepcopy(docs["nimcache.yaml"][0])
    del bad["spec"]["source"]["ngc"]["modelPuller"]
    assert any("modelPuller" in e for e in _errors(bad, _crd_schema("nimcaches")))


# KServe's predictor fields beside the pod spec (ComponentExtensionSpec, pkg/apis/serving/v1beta1/component.go)
# and the autoscaling types under it, as JSON Schema: the fields and types of the Go structs.
_QUANTITY = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
_TARGET = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type"],
    "properties": {
        "type": {"enum": ["Utilization", "Value", "AverageValue"]},
        "value": _QUANTITY,
        "averageValue": _QUANTITY,
        "averageUtilization": {"type": "integer"},
    },
}
KSERVE_EXTENSION = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 0},
    "scaleTarget": {"type": "integer"},
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "scaleMetricType": {"enum": ["Utilization", "Value", "AverageValue"]},
    "containerConcurrency": {"type": "integer"},
    "timeout": {"type": "integer"},
    "canaryTrafficPercent": {"type": "integer"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "autoScaling": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "behavior": {"type": "object"},
            "metrics": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type"],
                    "properties": {
                        "type": {"enum": ["Resource", "External", "PodMetric"]},
                        "external": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["metric", "target"],
                            "properties": {
                                "metric": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["backend"],
                                    "properties": {
                                        "backend": {"enum": ["prometheus", "graphite"]},
                                        "serverAddress": {"type": "string"},
                                        "query": {"type": "string", "minLength": 1},
                                        "namespace": {"type": "string"},
                                    },
                                },
                                "target": _TARGET,
                                "authenticationRef": {"type": "object"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def _kserve_predictor_errors(predictor: dict) -> list[str]:
    """KServe's own fields against KSERVE_EXTENSION; the rest must be a V1PodSpec that survives a round trip."""
    from kubernetes.client import ApiClient

    ext = {k: v for k, v in predictor.items() if k in KSERVE_EXTENSION}
    errors = _errors(ext, {"type": "object", "properties": KSERVE_EXTENSION})
    pod = {k: v for k, v in predictor.items() if k not in KSERVE_EXTENSION}
    client = ApiClient()
    typed = client.deserialize(json.dumps(pod), "V1PodSpec", "application/json")
    if client.sanitize_for_serialization(typed) != pod:
        errors.append("the pod part is not a V1PodSpec (a field the model does not know was dropped)")
    return errors


def test_inference_services_one_per_pool_with_gfd_affinity_probes_and_queue_scaling(rendered):
    _, docs = rendered
    services = docs["inferenceservice.yaml"]
    by_pool = {d["metadata"]["labels"]["nimbuild.io/pool"]: d for d in services}
    assert set(by_pool) == {"h100-sxm", "l40s", "gpu", "cpu"}
    for pool, doc in by_pool.items():
        assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
        assert len(doc["metadata"]["name"]) <= 45 and doc["metadata"]["name"][0].isalpha()
        predictor = doc["spec"]["predictor"]
        assert _kserve_predictor_errors(predictor) == []
        (container,) = predictor["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/v1/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/v1/health/live"
        assert container["ports"][0]["containerPort"] == 8000
        external = predictor["autoScaling"]["metrics"][0]["external"]
        assert "nimbuild_queue_depth" in external["metric"]["query"]
        assert f'pod=~"{doc["metadata"]["name"]}-predictor-.*"' in external["metric"]["query"]
        assert external["target"]["type"] == "Value" and int(external["target"]["value"]) > 0
        assert doc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
        assert doc["metadata"]["annotations"]["prometheus.kserve.io/path"] == "/v1/metrics"
        assert predictor["securityContext"]["runAsNonRoot"] is True
        if pool == "cpu":
            assert container["image"].endswith("-cpu") and "nvidia.com/gpu" not in container["resources"]["limits"]
        else:
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for slug in ("h100-sxm", "l40s"):
        terms = by_pool[slug]["spec"]["predictor"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        assert terms == [
            {
                "matchExpressions": [
                    {"key": "nvidia.com/gpu.product", "operator": "In", "values": [skus.lookup(slug).gfd_product]}
                ]
            }
        ]
    # the any-GPU pool leaves the engines' nodes to their own pools
    expr = by_pool["gpu"]["spec"]["predictor"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"][0]["matchExpressions"]
    assert expr[1]["operator"] == "NotIn" and set(expr[1]["values"]) == {
        skus.lookup("h100-sxm").gfd_product,
        skus.lookup("l40s").gfd_product,
    }


def test_the_inference_service_check_is_live(rendered):
    _, docs = rendered
    predictor = copy.deepcopy(docs["inferenceservice.yaml"][0]["spec"]["predictor"])
    predictor["autoScaling"]["metrics"][0]["external"]["metric"]["qurey"] = "x"
    assert _kserve_predictor_errors(predictor)
    predictor = copy.deepcopy(docs["inferenceservice.yaml"][0]["spec"]["predictor"])
    predictor["nodeSelektor"] = {"a": "b"}
    assert _kserve_predictor_errors(predictor)


def test_an_image_without_a_tag_is_refused(tmp_path):
    from nimbuild.errors import NimbuildError

    manifest_path = build_manifest(tmp_path / "exp")
    with pytest.raises(NimbuildError, match="has no tag"):
        deploy.render_deploy(manifest_path, tmp_path, image="registry.example/rerank")
