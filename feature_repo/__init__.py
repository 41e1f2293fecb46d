"""Feature definitions and the helpers every consumer of them shares (the bottom layer).

One Feast repository per business domain lives in a subfolder (``fraud/``, ``credit/``), each
usable on its own with the plain Feast CLI. The modules here name no domain: the layout of a
FeatureService as a model reads it (``layout``), the online-vector assembly and its status rule
(``online``), point-in-time retrieval (``retrieval``) and the on-demand transform contract
(``transforms``). Nothing here imports a consumer (pipelines, models, the scoring service).
"""
