"""Triton model repositories for one profile: templates, checks, writing (runtime side, jinja2 only).

``nimbuild render`` (:mod:`nimbuild.render.triton`) writes them at build time;
``create-model-store`` and ``serve``'s Triton backend re-render one at run time.
"""
