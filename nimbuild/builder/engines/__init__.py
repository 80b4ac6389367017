"""TensorRT engines for one GPU SKU, one module per concept (as Polygraphy's ``backend/trt``).

`nimbuild engines RECIPE --gpu SKU` turns the precision graphs that `nimbuild
export` left (``OUT/onnx/fp8``, ``OUT/onnx/fp16``: precision lives in the graph,
docs/design.md) into one strongly typed engine each, with one optimization
profile spanning the recipe's batch x sequence min/opt/max for every graph input.

    plan.py       what to build: engines, graphs, shapes, options, Polygraphy's Profile and CLI
    host.py       which GPU a build would use (NVML, CUDA_VISIBLE_DEVICES), ``--gpu auto``, the guards
    keys.py       build and check cache keys, build.json records: when an engine is reused
    feeds.py      the recipe's pairs as engine feeds within the profile's shapes
    reproduce.py  ``reproduce.sh``: the same build with ``polygraphy convert`` (templates/reproduce.sh.j2)
    build.py      the build loop: reuse or build, check, measure; ``engines_command`` (the CLI's entry)
    fragment.py   the passing engines as a manifest fragment
    trt_seam.py   the one module that imports ``tensorrt``: probe, build, check, latency

Everything except ``trt_seam`` runs without TensorRT and without a GPU, so tests
exercise it against Polygraphy's real objects and replace the seam by a fake.

Layout (docs/internals.md)::

    OUT/engines/<sku-slug>/timing.cache              persistent tactic timing cache per SKU
    OUT/engines/<sku-slug>/<precision>/model.plan    the engine
    OUT/engines/<sku-slug>/<precision>/reproduce.sh  the same build with `polygraphy convert`
    OUT/engines/<sku-slug>/<precision>/build.json    cache keys, metadata, check result
    OUT/engines/<sku-slug>/fragment.yaml             manifest fragment for `nimbuild manifest merge`
                                                     (paths relative to its folder: fp8/model.plan)
"""
