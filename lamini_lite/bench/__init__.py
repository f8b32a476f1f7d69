"""Benchmarks: commands that print measured speed and memory figures.

Run ``python -m lamini_lite.bench`` to list them and
``python -m lamini_lite.bench NAME [options]`` to run one. Each benchmark is a
module ``lamini_lite/bench/NAME.py`` with a ``main(argv) -> int`` function.
Nothing runs on import.
"""
