"""Everything nimbuild writes for serving and CI, from the Jinja2 templates in ``nimbuild/templates``.

``triton`` (``nimbuild render``: a model repository per profile), ``container``
(the serving Dockerfile) and ``plan`` (the per-GPU CI jobs). The repository
machinery they share with run time (templates, checks, ``create-model-store``,
``download-to-cache``) lives in :mod:`nimbuild.runtime.triton_repo` and
:mod:`nimbuild.runtime.model_store`: this package imports the runtime, never
the other way round.
"""
