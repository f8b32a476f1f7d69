"""Triton kernels for memory lookup, installed as ``lamini_lite.kernels``.

(Work in progress: the kernels land with the kernels issue.)
"""
