"""Benchmarks (not part of the library): speed and memory against the reference stack, and loading times.

    python -m bench.speed --preset tiny|small|full [--device cuda]
    python -m bench.load --preset tiny|small

Figures go to bench/RESULTS.md with the machine, the versions and the command that made them.
"""


def publish(text: str, out: str | None) -> None:
    """Print a benchmark's table and, with ``--out``, append it to that markdown file (bench/RESULTS.md)."""
    print(text)
    if out:
        with open(out, "a") as handle:
            handle.write(text + "\n\n")
