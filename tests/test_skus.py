"""The GPU SKU catalog: data file sound, every spelling found, unknown names listed."""

from __future__ import annotations

import re

import pytest
import yaml

from nimbuild import skus
from nimbuild.errors import NimbuildError

REQUIRED = [
    "h100-sxm",
    "h100-pcie",
    "h100-nvl",
    "h200",
    "gh200",
    "a100-sxm4-40gb",
    "a100-sxm4-80gb",
    "a100-pcie",
    "a10g",
    "a10",
    "l4",
    "l40",
    "l40s",
    "b200",
    "rtx-pro-6000",
    "t4",
]


def test_catalog_has_every_required_sku():
    slugs = {s for sku in skus.catalog() for s in sku.slugs}
    assert set(REQUIRED) <= slugs


def test_catalog_fields_are_well_formed():
    for sku in skus.catalog():
        assert re.match(r"^[0-9a-f]{4}:10de$", sku.pci_device_id), sku
        assert re.match(r"^\d+\.\d+$", sku.compute_capability), sku
        assert sku.memory_gib > 0
        assert sku.gfd_product and " " not in sku.gfd_product
        assert re.match(r"^[a-z0-9-]+$", sku.name_slug)
        assert sku.slug == sku.slugs[0]


def test_known_facts():
    h100 = skus.lookup("h100-sxm")
    assert h100.canonical == "NVIDIA-H100-80GB-HBM3"
    assert h100.nvml_names == ("NVIDIA H100 80GB HBM3",)
    assert h100.pci_device_id == "2330:10de"
    assert h100.compute_capability == "9.0" and h100.memory_gib == 80
    assert skus.lookup("a100-sxm4-80gb").pci_device_id == "20b2:10de"
    assert skus.lookup("t4").nvml_names == ("Tesla T4",)
    assert skus.lookup("b200").compute_capability == "10.0"


@pytest.mark.parametrize(
    "slug,fp8",
    [
        ("h100-sxm", True),
        ("l4", True),
        ("l40s", True),
        ("b200", True),
        ("rtx-pro-6000", True),
        ("a100-sxm4-80gb", False),
        ("a10g", False),
        ("t4", False),
    ],
)
def test_fp8_is_derived_from_compute_capability(slug, fp8):
    assert skus.lookup(slug).fp8 is fp8


@pytest.mark.parametrize(
    "text",
    [
        "NVIDIA-H100-80GB-HBM3",
        "nvidia-h100-80gb-hbm3",
        "NVIDIA H100 80GB HBM3",
        "nvidia h100 80gb hbm3",
        "h100-sxm",
        "H100-SXM",
        "h100_sxm",
        "2330:10de",
        "h100-hbm3-80gb",
    ],
)
def test_lookup_accepts_every_spelling(text):
    assert skus.lookup(text).canonical == "NVIDIA-H100-80GB-HBM3"


def test_lookup_unknown_lists_known_skus():
    with pytest.raises(NimbuildError) as exc:
        skus.lookup("h100")  # ambiguous on purpose: PCIe, SXM, NVL
    msg = str(exc.value)
    assert "'h100'" in msg
    for slug in ("h100-sxm", "l40s", "t4"):
        assert slug in msg


@pytest.mark.parametrize("pci", ["2330:10de", "10de:2330", "0x233010DE", "233010de", "0x2330", "2330"])
def test_by_pci_device_id_spellings(pci):
    assert skus.by_pci_device_id(pci).slug == "h100-sxm"


def test_by_pci_device_id_unknown_is_none():
    assert skus.by_pci_device_id("ffff:10de") is None
    assert skus.by_pci_device_id("not-a-pci-id") is None


def test_by_nvml_name():
    assert skus.by_nvml_name("NVIDIA A100-SXM4-80GB").slug == "a100-sxm4-80gb"
    assert skus.by_nvml_name("NVIDIA A100 80GB PCIe").slug == "a100-pcie-80gb"
    assert skus.by_nvml_name("NVIDIA Nonexistent") is None


def test_no_two_skus_share_a_name_or_id():
    seen: dict[str, str] = {}
    for sku in skus.catalog():
        for name in {sku.canonical, sku.gfd_product, sku.name_slug, *sku.slugs, *sku.nvml_names}:
            key = skus.normalize_name(name)
            assert seen.setdefault(key, sku.canonical) == sku.canonical, key
        for pci in sku.pci_device_ids:
            assert seen.setdefault(pci, sku.canonical) == sku.canonical, pci


def test_adding_a_sku_is_one_entry(tmp_path, monkeypatch):
    data = yaml.safe_load(skus.CATALOG_PATH.read_text())
    data["skus"].append(
        {
            "canonical": "NVIDIA-FOO-1",
            "slugs": ["foo-1"],
            "name_slug": "foo-1-8gb",
            "nvml_names": ["NVIDIA FOO 1"],
            "pci_device_ids": ["abcd:10de"],
            "compute_capability": "9.0",
            "memory_gib": 8,
            "gfd_product": "NVIDIA-FOO-1",
        }
    )
    path = tmp_path / "skus.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(skus, "CATALOG_PATH", path)
    skus._load.cache_clear()
    try:
        assert skus.lookup("NVIDIA FOO 1").fp8
        assert skus.by_pci_device_id("abcd:10de").canonical == "NVIDIA-FOO-1"
    finally:
        skus._load.cache_clear()


def test_a_name_clash_in_the_data_is_an_error(tmp_path, monkeypatch):
    data = yaml.safe_load(skus.CATALOG_PATH.read_text())
    dup = dict(data["skus"][0], canonical="NVIDIA-OTHER", pci_device_ids=["beef:10de"])
    data["skus"].append(dup)
    path = tmp_path / "skus.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(skus, "CATALOG_PATH", path)
    skus._load.cache_clear()
    try:
        with pytest.raises(NimbuildError, match=r"skus\[\d+\]"):
            skus.catalog()
    finally:
        skus._load.cache_clear()


def test_catalog_is_light():
    import subprocess
    import sys

    code = (
        "import sys, nimbuild.skus as s; s.catalog(); "
        "heavy = [m for m in ('torch','onnx','transformers','pydantic','rich') if m in sys.modules]; "
        "print(heavy)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
