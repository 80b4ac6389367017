"""The test bed's text: Debian's own package summaries (queries) and long descriptions (passages).

Why this corpus: it is real English written by thousands of people, it is on every Debian
machine (apt's lists), and it is a natural reranking task: "which package does what this
one-line summary says?" (the way a user searches `apt search`). A summary and its own
description share some words (so BM25 is a fair baseline) but often not the decisive ones
("lightweight and flexible command-line JSON processor" vs "jq is like sed for JSON data"),
which is what a cross-encoder is for. WordNet glosses (one-word queries) and Python's
docs (a few hundred topics) are smaller and less like a search.

Reproducible without today's apt state: ``python -m testbed data`` derives the dataset
from the lists once and the result is committed (``testbed/data/debian-packages.jsonl.xz``,
with the source files' sha256 and the Debian release in ``debian-packages.provenance.json``);
training and evaluation read only the committed file.
"""

from __future__ import annotations

import hashlib
import lzma
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
DATASET = DATA_DIR / "debian-packages.jsonl.xz"
PROVENANCE = DATA_DIR / "debian-packages.provenance.json"
APT_LISTS = Path("/var/lib/apt/lists")
# The release whose lists the committed dataset was derived from (main, amd64, English descriptions).
SUITE_PREFIX = "deb.debian.org_debian_dists_bookworm_"
PACKAGES_LIST = "main_binary-amd64_Packages"
TRANSLATION_LIST = "main_i18n_Translation-en"

# Packages whose summaries are not a user's search: shared libraries, headers, debug symbols,
# documentation and data split off a program, translations, transitional stubs.
SKIP_SECTIONS = frozenset(
    {
        "libs",
        "libdevel",
        "oldlibs",
        "debug",
        "doc",
        "localization",
        "fonts",
        "metapackages",
        "tasks",
        "introspection",
        "kernel",
    }
)
SKIP_SUFFIXES = (
    "-dev",
    "-doc",
    "-docs",
    "-dbg",
    "-dbgsym",
    "-data",
    "-common",
    "-l10n",
    "-locale",
    "-locales",
    "-tests",
    "-examples",
    "-dev-bin",
    "-bin",
    "-utils-data",
    "-prof",
)
SKIP_SUMMARY = re.compile(r"transitional|dummy package|metapackage|meta-package|virtual package|debug symbols", re.I)
MIN_QUERY_WORDS, MIN_PASSAGE_WORDS, MAX_PASSAGE_WORDS = 3, 15, 80
# Rules of the derivation: part of the provenance, so a rule change shows as a new dataset.
RULES_VERSION = 1


@dataclass(frozen=True)
class Package:
    name: str
    section: str
    query: str  # the one-line summary
    passage: str  # the long description, flattened, at most MAX_PASSAGE_WORDS words

    def to_json(self) -> str:
        from nimbuild.fsutil import json_text

        return json_text(
            {"package": self.name, "section": self.section, "query": self.query, "passage": self.passage}, indent=None
        )


def deb822(text: str) -> Iterator[dict[str, str]]:
    """Paragraphs of a Debian control-style file (Packages, Translation-en): {field: value}, continuations joined."""
    para: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if para:
                yield para
            para, key = {}, None
        elif line[0] in " \t" and key is not None:
            para[key] += "\n" + line
        else:
            key, _, value = line.partition(":")
            para[key] = value.strip()
    if para:
        yield para


def flatten_description(long: str) -> str:
    """A Debian long description (`` .`` paragraph breaks, indented lists) as one line of prose."""
    lines = []
    for line in long.splitlines():
        line = line.strip()
        if line == ".":
            continue
        lines.append(line.lstrip("*-+o ").strip() if line[:2] in ("* ", "- ", "+ ", "o ") else line)
    words = " ".join(lines).split()
    return " ".join(words[:MAX_PASSAGE_WORDS])


def read_list(path: Path) -> bytes:
    """An apt list file as bytes: plain, or compressed as apt keeps it (.lz4, .xz, .gz)."""
    if path.suffix == ".lz4":
        return subprocess.run(["lz4cat", str(path)], check=True, capture_output=True).stdout
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if path.suffix == ".gz":
        import gzip

        return gzip.decompress(path.read_bytes())
    return path.read_bytes()


def find_list(lists: Path, name: str) -> Path:
    for suffix in ("", ".lz4", ".xz", ".gz"):
        p = lists / (SUITE_PREFIX + name + suffix)
        if p.is_file():
            return p
    raise SystemExit(
        f"error: {lists}/{SUITE_PREFIX}{name}[.lz4|.xz|.gz] not found; "
        "run `apt-get update -o Acquire::Languages=en` (Debian 12) to fetch the package lists with English descriptions"
    )


def derive(packages_text: str, translation_text: str) -> list[Package]:
    """The dataset from a Packages and a Translation-en file (deterministic: same bytes in, same list out)."""
    descriptions = {p["Description-md5"]: p.get("Description-en", "") for p in deb822(translation_text)}
    by_source: dict[str, list[dict[str, str]]] = {}
    seen_names = set()
    for p in deb822(packages_text):
        name = p.get("Package", "")
        if not name or name in seen_names:
            continue
        seen_names.add(name)
        section = p.get("Section", "").split("/")[-1]
        if section in SKIP_SECTIONS or name.endswith(SKIP_SUFFIXES):
            continue
        source = p.get("Source", name).split()[0]
        by_source.setdefault(source, []).append(p)
    candidates = []
    for source, pkgs in sorted(by_source.items()):
        # one binary per source package (its siblings repeat the same description): the one named
        # like the source, else the shortest name
        pkg = min(pkgs, key=lambda p: (p["Package"] != source, len(p["Package"]), p["Package"]))
        full = descriptions.get(pkg.get("Description-md5", ""))
        if not full:
            continue
        summary, _, long = full.partition("\n")
        summary = " ".join(summary.split())
        passage = flatten_description(long)
        if SKIP_SUMMARY.search(summary) or len(summary.split()) < MIN_QUERY_WORDS:
            continue
        if len(passage.split()) < MIN_PASSAGE_WORDS:
            continue
        candidates.append(Package(pkg["Package"], pkg.get("Section", "").split("/")[-1], summary, passage))
    # a summary or a description shared by two kept packages has no single right answer: drop both
    queries = Counter(p.query.lower() for p in candidates)
    passages = Counter(p.passage for p in candidates)
    kept = [p for p in candidates if queries[p.query.lower()] == 1 and passages[p.passage] == 1]
    return sorted(kept, key=lambda p: p.name)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def release_info(lists: Path) -> dict[str, str]:
    """Suite, version and date of the release file the lists came from (its InRelease)."""
    info = {}
    for name in ("InRelease", "Release"):
        p = lists / (SUITE_PREFIX + name)
        if p.is_file():
            text = p.read_text(encoding="utf-8", errors="replace")
            if text.startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
                text = text.split("\n\n", 1)[1]  # the armour header ends at the first blank line
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key in ("Origin", "Suite", "Codename", "Version", "Date"):
                    info[key.lower()] = value.strip()
            info["inrelease_sha256"] = sha256_bytes(p.read_bytes())
            break
    return info


def write_dataset(lists: Path = APT_LISTS, out: Path = DATASET) -> dict:
    """Derive the dataset from apt's lists and write it (xz JSONL) with its provenance."""
    from nimbuild.fsutil import atomic_write_bytes, write_json

    pk_path, tr_path = find_list(lists, PACKAGES_LIST), find_list(lists, TRANSLATION_LIST)
    pk_bytes, tr_bytes = read_list(pk_path), read_list(tr_path)
    kept = derive(pk_bytes.decode("utf-8"), tr_bytes.decode("utf-8"))
    body = ("\n".join(p.to_json() for p in kept) + "\n").encode("utf-8")
    atomic_write_bytes(out, lzma.compress(body, preset=9 | lzma.PRESET_EXTREME))
    provenance = {
        "release": release_info(lists),
        "sources": {
            "Packages": {"file": pk_path.name, "sha256_uncompressed": sha256_bytes(pk_bytes), "bytes": len(pk_bytes)},
            "Translation-en": {
                "file": tr_path.name,
                "sha256_uncompressed": sha256_bytes(tr_bytes),
                "bytes": len(tr_bytes),
            },
        },
        "rules_version": RULES_VERSION,
        "packages": len(kept),
        "dataset_sha256_uncompressed": sha256_bytes(body),
        "command": "python -m testbed data",
    }
    write_json(PROVENANCE if out == DATASET else out.with_suffix(".provenance.json"), provenance)
    return provenance


def load_dataset(path: Path = DATASET) -> list[Package]:
    """The committed dataset, checked against the sha256 its provenance records."""
    from nimbuild.safeload import load_json, parse_json

    body = lzma.decompress(path.read_bytes())
    prov = load_json(PROVENANCE, what="test bed provenance") if path == DATASET else None
    if prov is not None and sha256_bytes(body) != prov["dataset_sha256_uncompressed"]:
        raise SystemExit(
            f"error: {path} does not match the sha256 in {PROVENANCE}; re-derive it: python -m testbed data"
        )
    out = []
    for n, line in enumerate(body.decode("utf-8").splitlines(), 1):
        o = parse_json(line, f"{path}:{n}", what="dataset line")
        out.append(Package(o["package"], o["section"], o["query"], o["passage"]))
    return out
