"""Speed/quality benchmark of teleport on the reference models: ``python -m gaussian_teleport.bench.run``.

Needs scikit-learn (the data sets) and matplotlib (the plots) besides the core's torch and numpy.
"""

if "." not in __name__:  # found as a top-level module on a host's sys.path: not ours (see _isolation.py)
    import os as _os, runpy as _runpy
    _runpy.run_path(_os.path.join(_os.path.dirname(__file__), _os.pardir, "_isolation.py"))["defer"](globals())


import os
import tempfile

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")   # the committed results


def report_path(out: str | None, quick: bool, name: str) -> str:
    """Where a core benchmark writes: --out, else bench/results/<name> — or, for a --quick smoke run, a new
    temporary folder (a smoke run never replaces committed results)."""

    return out if out is not None else os.path.join(default_folder(quick), name)


def default_folder(quick: bool) -> str:
    """The committed results, or for a smoke run a new temporary folder."""
    return tempfile.mkdtemp(prefix="teleport-bench-") if quick else RESULTS


def write_markdown(path: str, lines: list[str]) -> None:
    """Write a report's lines to ``path`` (creating its folder) and say where."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {path}")
