"""Triton model repositories for one profile (runtime side: jinja2 only; onnx and tritonclient optional).

``nimbuild render`` (:mod:`nimbuild.render.triton`) writes them at build time;
``create-model-store`` and ``serve``'s Triton backend re-render one at run time.
One module per job:

    layout.py     the names every repository shares (models, record file, tokenizer feeds)
    sources.py    a profile's model file, its external data, its graph, its tokenizer files
    contexts.py   ServingOptions and the template contexts of the three models; render_configs
    record.py     nimbuild-repository.json: profile_info builds it, read_repository_info reads it
    cc_groups.py  engines of one precision for several compute capabilities in one repository
    checks.py     configs against Triton's ModelConfig schema, then names, types, batch, wiring
    writing.py    write_repository: render, check, place files, atomically
    serving_overrides.py  NIM_TRITON_* serve-time overrides, re-rendered from the record
    templating.py the one Jinja2 environment;  files.py  link or verified copy
    pbtxt.py      Triton's ModelConfig schema;   onnx_io.py  the light ONNX I/O reader
"""
