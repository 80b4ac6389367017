"""Everything nimbuild writes for serving and CI, from the Jinja2 templates in ``nimbuild/templates``.

``triton`` (model repositories), ``store`` (create-model-store,
download-to-cache: runtime side, kept light), ``container`` (the serving
Dockerfile) and ``plan`` (the per-GPU CI jobs). The runtime never imports this
package; ``nimbuild serve`` reaches ``store`` lazily, from a function.
"""
