"""Kubernetes resources for the serving images (``OUT/deploy/``).

- ``nimcache.yaml``, ``nimservice.yaml``: the NIM Operator's ``NIMCache`` and ``NIMService``
  (apps.nvidia.com/v1alpha1) for each image (GPU, CPU). The NIMCache job runs the image's
  ``download-to-cache --profiles ID...`` with ``NIM_CACHE_PATH=/model-store`` on its volume; the
  NIMService mounts that volume, probes ``/v1/health/{live,ready}`` on port ``api`` (8000),
  scrapes ``/v1/metrics`` and scales on the queue depth (an HPA ``Pods`` metric).
- ``inferenceservice.yaml``: one KServe ``InferenceService`` (serving.kserve.io/v1beta1) per pool
  of nodes, for serving at scale without the operator. KServe, not a Helm chart: it is what
  NVIDIA documents for NIMs on Kubernetes (the operator's own ``kserve`` platform renders
  InferenceServices), it scales on a Prometheus query through KEDA without a custom-metrics
  adapter, and its predictor is a plain pod spec, checkable with the kubernetes client's models
  (a chart's templates could not be checked without helm). A pool is one GPU SKU that has
  TensorRT engines (required GPU Feature Discovery affinity on its ``nvidia.com/gpu.product``),
  any other GPU for ONNX GPU profiles, or CPU nodes for the CPU image; the runtime selects the
  best profile on each node, so a pool lists no profile ID.

Every value goes into YAML through the YAML emitter (no template quoting to get wrong).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from nimbuild.errors import NimbuildError

GFD_PRODUCT = "nvidia.com/gpu.product"  # GPU Feature Discovery's node label
OPERATOR_API_VERSION = "apps.nvidia.com/v1alpha1"
KSERVE_API_VERSION = "serving.kserve.io/v1beta1"
CACHE_MOUNT = "/model-store"  # where the operator mounts the NIMCache volume (utils.DefaultModelStorePath)
DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
FILES = ("nimcache.yaml", "nimservice.yaml", "inferenceservice.yaml")
_GIB = 1 << 30


@dataclass
class Pool:
    """One set of nodes the pods of an image go to, and what that image may run there."""

    name: str  # h100-sxm | gpu | cpu
    image_kind: str  # gpu | cpu
    products: list[str]  # required nvidia.com/gpu.product values ([] = any GPU, or no GPU for cpu)
    exclude: list[str] = field(default_factory=list)  # products other pools own
    profiles: list = field(default_factory=list)

    @property
    def max_batch_size(self) -> int:
        return max((int(p.tags.get("max_batch_size", "1") or 1) for p in self.profiles), default=1)

    @property
    def gpu_count(self) -> int:
        return max((int(p.tags.get("gpu_count", "1") or 1) for p in self.profiles), default=1)


def _products_of(profile) -> list[str]:
    """The GFD products a TensorRT profile runs on: its PCI device, or every SKU of its compute capability."""
    from nimbuild import skus

    if profile.tags.get("hardware_compatibility_level"):
        cc = profile.tags.get("compute_capability")
        return sorted({s.gfd_product for s in skus.catalog() if s.compute_capability == cc})
    sku = skus.by_pci_device_id(profile.tags.get("gpu_device", ""))
    return [sku.gfd_product] if sku is not None else []


def pools(manifest) -> list[Pool]:
    """The manifest's node pools: one per TensorRT GPU SKU, one for ONNX on any other GPU, one for CPU."""
    from nimbuild import skus

    by_product: dict[str, Pool] = {}
    for profile in manifest.profiles:
        if profile.tags.get("backend") != "tensorrt":
            continue
        for product in _products_of(profile):
            sku = next((s for s in skus.catalog() if s.gfd_product == product), None)
            pool = by_product.setdefault(product, Pool(sku.slug if sku else product.lower(), "gpu", [product]))
            pool.profiles.append(profile)
    out = sorted(by_product.values(), key=lambda p: p.name)
    onnx_gpu = [p for p in manifest.profiles if p.tags.get("backend") == "onnx" and p.tags.get("device") == "gpu"]
    if onnx_gpu:
        out.append(Pool("gpu", "gpu", [], exclude=sorted(by_product), profiles=onnx_gpu))
    cpu = [p for p in manifest.profiles if p.tags.get("device") == "cpu"]
    if cpu:
        out.append(Pool("cpu", "cpu", [], profiles=cpu))
    return out


def _dns_label(*parts: str, limit: int = 63) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)  # KServe: must start with a letter
    return name[:limit].rstrip("-") or "nimbuild"


def _split_image(image: str) -> tuple[str, str]:
    """repository, tag of an image reference (a digest stays in the tag field, as the operator reads it)."""
    last = image.rsplit("/", 1)[-1]
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, "@" + digest
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    raise NimbuildError(f"image {image!r} has no tag", hint="give REPOSITORY:TAG, e.g. registry.example/reranker:0.1.0")


def _size_gib(manifest, profiles, factor: float = 1.0) -> int:
    """Whole GiB holding ``factor`` times the profiles' local files (at least 1)."""
    total = sum(e.size or 0 for p in profiles for e in p.files.values())
    return max(1, math.ceil(total * factor / _GIB))


def _affinity(pool: Pool) -> dict:
    """GPU Feature Discovery node affinity: the pool's products required, or any GPU the others do not own,
    or (CPU) nodes without a GPU preferred."""
    if pool.image_kind == "cpu":
        term = {"matchExpressions": [{"key": GFD_PRODUCT, "operator": "DoesNotExist"}]}
        return {
            "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": term}]}
        }
    if pool.products:
        expr = [{"key": GFD_PRODUCT, "operator": "In", "values": pool.products}]
    else:
        expr = [{"key": GFD_PRODUCT, "operator": "Exists"}]
        if pool.exclude:
            expr.append({"key": GFD_PRODUCT, "operator": "NotIn", "values": pool.exclude})
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": expr}]}
        }
    }


def _resources(manifest, pool: Pool) -> dict:
    memory = 1 + 2 * _size_gib(manifest, pool.profiles, 1.0)  # the graph, its runtime copy, headroom
    res = {"requests": {"cpu": "2", "memory": f"{memory}Gi"}, "limits": {"memory": f"{2 * memory}Gi"}}
    if pool.image_kind == "gpu":
        res["limits"]["nvidia.com/gpu"] = str(pool.gpu_count)
    return res


def _probe(path: str, port, *, period: int = 10, failures: int = 3, initial: int = 0) -> dict:
    probe = {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "failureThreshold": failures}
    if initial:
        probe["initialDelaySeconds"] = initial
    return probe


@dataclass
class DeployOptions:
    image: str  # the GPU image, REPOSITORY:TAG
    cpu_image: str
    namespace: str = "default"
    prometheus: str = DEFAULT_PROMETHEUS
    min_replicas: int = 1
    max_replicas: int = 4
    uid: int = 10001  # the images' USER


def nim_resources(manifest, model: str, opts: DeployOptions) -> tuple[list[dict], list[dict]]:
    """(NIMCaches, NIMServices): one of each per image that has profiles."""
    labels = {"app.kubernetes.io/name": "nimbuild", "nimbuild.io/model": model}
    caches, services = [], []
    kinds = {
        "gpu": [p for p in manifest.profiles if p.tags.get("device") == "gpu"],
        "cpu": [p for p in manifest.profiles if p.tags.get("device") == "cpu"],
    }
    gpu_pools = [p for p in pools(manifest) if p.image_kind == "gpu"]
    for kind, profiles in kinds.items():
        if not profiles:
            continue
        name = _dns_label(model, *(["cpu"] if kind == "cpu" else []), limit=52)
        image = opts.image if kind == "gpu" else opts.cpu_image
        repository, tag = _split_image(image)
        caches.append(
            {
                "apiVersion": OPERATOR_API_VERSION,
                "kind": "NIMCache",
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "source": {
                        "ngc": {
                            "modelPuller": image,
                            # nimbuild images need no NGC key; the operator adds no envFrom for an empty one
                            "authSecret": "",
                            "model": {"profiles": sorted(p.id for p in profiles)},
                        }
                    },
                    "storage": {
                        "pvc": {
                            "create": True,
                            "size": f"{_size_gib(manifest, profiles, 1.25)}Gi",
                            # NIMService replicas on several nodes mount it at once
                            "volumeAccessMode": "ReadWriteMany",
                        }
                    },
                    "resources": {"cpu": "1", "memory": "1Gi"},
                    "userID": opts.uid,
                    "groupID": opts.uid,
                },
            }
        )
        if kind == "gpu":
            pool = Pool("gpu", "gpu", [], profiles=profiles)
            products = sorted({x for p in gpu_pools for x in p.products})
            only_engines = all(p.tags.get("backend") == "tensorrt" for p in profiles)
            affinity = _affinity(Pool("gpu", "gpu", products if only_engines else [], profiles=profiles))
            if products and not only_engines:  # prefer the nodes that have engines
                term = {"matchExpressions": [{"key": GFD_PRODUCT, "operator": "In", "values": products}]}
                affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] = [
                    {"weight": 100, "preference": term}
                ]
        else:
            pool = Pool("cpu", "cpu", [], profiles=profiles)
            affinity = _affinity(pool)
        services.append(
            {
                "apiVersion": OPERATOR_API_VERSION,
                "kind": "NIMService",
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
                    "storage": {"nimCache": {"name": name}},
                    "replicas": opts.min_replicas,
                    "resources": _resources(manifest, pool),
                    "affinity": affinity,
                    "userID": opts.uid,
                    "groupID": opts.uid,
                    "expose": {"service": {"type": "ClusterIP", "port": 8000}},
                    "metrics": {"enabled": True, "serviceMonitor": {"interval": "15s"}},
                    "scale": {
                        "enabled": True,
                        "hpa": {
                            "minReplicas": opts.min_replicas,
                            "maxReplicas": opts.max_replicas,
                            # nimbuild_queue_depth (passages waiting, /v1/metrics) through the custom metrics
                            # API (e.g. prometheus-adapter): one full batch waiting per replica adds one
                            "metrics": [
                                {
                                    "type": "Pods",
                                    "pods": {
                                        "metric": {"name": "nimbuild_queue_depth"},
                                        "target": {"type": "AverageValue", "averageValue": str(pool.max_batch_size)},
                                    },
                                }
                            ],
                        },
                    },
                },
            }
        )
    return caches, services


def inference_services(manifest, model: str, opts: DeployOptions) -> list[dict]:
    """One KServe InferenceService per pool (raw deployment, KEDA scaling on the queue depth)."""
    out = []
    for pool in pools(manifest):
        name = _dns_label(model, pool.name, limit=45)  # + "-predictor-<hash>" stays a DNS label
        port = 8000
        query = f'sum(nimbuild_queue_depth{{namespace="{opts.namespace}",pod=~"{name}-predictor-.*"}})'
        container = {
            "name": "kserve-container",
            "image": opts.image if pool.image_kind == "gpu" else opts.cpu_image,
            "ports": [{"name": "http1", "containerPort": port, "protocol": "TCP"}],
            "env": [{"name": "NIM_HTTP_API_PORT", "value": str(port)}],
            "resources": _resources(manifest, pool),
            "readinessProbe": _probe("/v1/health/ready", port),
            "livenessProbe": _probe("/v1/health/live", port, period=15),
            # engines load and Triton starts before ready: up to 20 minutes
            "startupProbe": _probe("/v1/health/ready", port, period=10, failures=120),
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }
        out.append(
            {
                "apiVersion": KSERVE_API_VERSION,
                "kind": "InferenceService",
                "metadata": {
                    "name": name,
                    "namespace": opts.namespace,
                    "labels": {
                        "app.kubernetes.io/name": "nimbuild",
                        "nimbuild.io/model": model,
                        "nimbuild.io/pool": pool.name,
                    },
                    "annotations": {
                        # raw Kubernetes Deployment (no Knative); KServe >= 0.16 calls it "Standard" and accepts this
                        "serving.kserve.io/deploymentMode": "RawDeployment",
                        "serving.kserve.io/autoscalerClass": "keda",
                        "serving.kserve.io/enable-prometheus-scraping": "true",
                        "prometheus.kserve.io/port": str(port),
                        "prometheus.kserve.io/path": "/v1/metrics",
                    },
                },
                "spec": {
                    "predictor": {
                        "minReplicas": opts.min_replicas,
                        "maxReplicas": opts.max_replicas,
                        "autoScaling": {
                            "metrics": [
                                {
                                    "type": "External",
                                    "external": {
                                        "metric": {
                                            "backend": "prometheus",
                                            "serverAddress": opts.prometheus,
                                            "query": query,
                                        },
                                        # KEDA divides the query by this: replicas = ceil(waiting / one batch)
                                        "target": {"type": "Value", "value": str(pool.max_batch_size)},
                                    },
                                }
                            ]
                        },
                        "affinity": _affinity(pool),
                        "securityContext": {"runAsNonRoot": True, "runAsUser": opts.uid, "runAsGroup": opts.uid},
                        "terminationGracePeriodSeconds": 60,
                        "containers": [container],
                    }
                },
            }
        )
    return out


HEADERS = {
    "nimcache.yaml": "The NIM Operator's NIMCache per image: its job runs `download-to-cache --profiles ID...` in the\n"
    "image with NIM_CACHE_PATH=/model-store on this volume. kubectl apply -f nimcache.yaml",
    "nimservice.yaml": "The NIM Operator's NIMService per image, on its NIMCache. Scaling reads nimbuild_queue_depth\n"
    "through the custom metrics API (prometheus-adapter). kubectl apply -f nimservice.yaml",
    "inferenceservice.yaml": "KServe InferenceServices, one per node pool (GPU Feature Discovery's\n"
    "nvidia.com/gpu.product), raw deployment, scaled by KEDA on the Prometheus query of nimbuild_queue_depth.\n"
    "kubectl apply -f inferenceservice.yaml",
}


DEPLOY_DIR = "deploy"


def deploy_outputs() -> list[str]:
    """What :func:`render_deploy` writes under its ``out_dir`` (relative paths): checked before anything is."""
    return [f"{DEPLOY_DIR}/{name}" for name in HEADERS]


def render_deploy(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    image: str | None = None,
    cpu_image: str | None = None,
    force: bool = False,
    **options,
) -> list[Path]:
    """``out_dir/deploy/{nimcache,nimservice,inferenceservice}.yaml`` for the manifest's images.

    Written through ``out_dir``'s ledger (nimbuild.outdir): a deploy/ file nimbuild did not write
    (your own edited resources) is replaced only under ``force``; other files in deploy/ are never touched.
    """
    import yaml

    from nimbuild import __version__
    from nimbuild.manifest import load_manifest
    from nimbuild.outdir import OutputFolder
    from nimbuild.safe_text import printable

    manifest = load_manifest(manifest_path)
    model = str(
        manifest.header.get("model") or (manifest.profiles[0].tags.get("model") if manifest.profiles else "model")
    )
    image = image or f"nimbuild/{model}:{__version__}"
    repo, tag = _split_image(image)
    opts = DeployOptions(image=image, cpu_image=cpu_image or f"{repo}:{tag}-cpu", **options)
    _split_image(opts.cpu_image)
    caches, services = nim_resources(manifest, model, opts)
    docs = {
        "nimcache.yaml": caches,
        "nimservice.yaml": services,
        "inferenceservice.yaml": inference_services(manifest, model, opts),
    }
    contents = {}
    for name, objects in docs.items():
        head = f"# Rendered by nimbuild {__version__} for model {printable(model)}: do not edit, "
        head += "re-run `nimbuild render`.\n"
        head += "".join(f"# {line}\n" for line in HEADERS[name].splitlines())
        body = "".join("---\n" + yaml.safe_dump(o, sort_keys=False, default_flow_style=False) for o in objects)
        contents[f"{DEPLOY_DIR}/{name}"] = (head + body).encode("utf-8")
    folder = OutputFolder(out_dir)
    with folder.locked("nimbuild render"):  # re-entrant: render_all holds it
        folder.check_replaceable(contents, force=force, action="render")
        folder.write_files(contents)
    return [Path(out_dir) / rel for rel in contents]
