"""Benchmarks (not part of the library): speed and memory against the reference stack, and loading times.

    python -m bench.speed --preset tiny|small|full [--device cuda]
    python -m bench.load --preset tiny|small

Figures go to bench/RESULTS.md with the machine, the versions and the command that made them.
"""
