"""The book's experiments, one module per chapter, apart from the reusable library.

Each ``chNN_*.py`` module holds what only serves its chapter: its studies, the
sizes they run at in each profile (``register_sizes``), its claims
(:class:`lamini_lite.claims.Claim`, checked by both the notebook and
``python -m lamini_lite.bench robustness``), its result tables and its plots.
:mod:`~lamini_lite.experiments.common` holds what several chapters share (the
synthetic world, its pretrained backbone, the SliCK sizes).

Library modules never import from here, and this package imports nothing on
its own: import the chapter module you need.
"""
