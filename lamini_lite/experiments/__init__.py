"""The book's experiments, one module per chapter, apart from the reusable library.

Each ``chNN_*.py`` module holds what only serves its chapter. Today that is
the chapter's claims (:class:`lamini_lite.claims.Claim`), defined once and
checked by both the notebook and ``python -m lamini_lite.bench robustness``.
Library modules never import from here.
"""
