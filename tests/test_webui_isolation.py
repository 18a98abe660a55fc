"""With the extension folder on sys.path (as Forge keeps it), our subpackages never answer a
top-level import: another module of that name wins, and with none the import fails."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every subpackage of the project: each must carry the guard (moments, scheduler, nodes, webui, …).
GENERIC = sorted(d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, "__init__.py")))


def run(code, tmp_path, path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = "import sys\nsys.path[:0] = %r\n" % [str(p) for p in path] + textwrap.dedent(code)
    out = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_another_module_of_the_name_wins(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in GENERIC:
        (other / f"{name}.py").write_text(f"WHO = 'other {name}'\n")
    out = run(f"""
        import importlib
        for name in {GENERIC!r}:
            theirs = importlib.import_module(name)
            ours = importlib.import_module('gaussian_teleport.' + name)
            print(theirs.WHO.replace(' ', '-'), ours.__name__, hasattr(ours, 'WHO'))
    """, tmp_path, [ROOT, other])
    assert out == [w for name in GENERIC for w in (f"other-{name}", f"gaussian_teleport.{name}", "False")]


def test_another_package_of_the_name_wins_and_imports_its_submodules(tmp_path):
    other = tmp_path / "other" / "scheduler"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("from .impl import WHO\n")
    (other / "impl.py").write_text("WHO = 'theirs'\n")
    out = run("""
        import scheduler, scheduler.impl
        print(scheduler.WHO, scheduler.impl.WHO)
        from gaussian_teleport.scheduler import Handoff
        print(Handoff.parse('sigma:5'))
    """, tmp_path, [ROOT, other.parent])
    assert out == ["theirs", "theirs", "sigma:5"]


def test_no_other_module_means_import_error(tmp_path):
    out = run(f"""
        import importlib
        for name in {GENERIC!r}:
            try:
                importlib.import_module(name)
                print('imported', name)
            except ImportError as exc:
                print(type(exc).__name__, exc.name, name in sys.modules)
            importlib.import_module('gaussian_teleport.' + name)
    """, tmp_path, [ROOT])
    assert out == [w for name in GENERIC for w in ("ModuleNotFoundError", name, "False")]


def test_two_copies_of_the_extension_do_not_loop(tmp_path):
    """A second copy of the project on sys.path is skipped too (its guard would defer back to us)."""
    copy = tmp_path / "copy"
    (copy / "moments").mkdir(parents=True)
    with open(os.path.join(ROOT, "_isolation.py")) as f:
        (copy / "_isolation.py").write_text(f.read())
    with open(os.path.join(ROOT, "moments", "__init__.py")) as f:
        (copy / "moments" / "__init__.py").write_text(f.read())
    out = run("""
        try:
            import moments
        except ImportError as exc:
            print(type(exc).__name__)
    """, tmp_path, [ROOT, copy])
    assert out == ["ModuleNotFoundError"]


def test_tests_folder_is_never_a_package(tmp_path):
    """tests/ has no __init__.py, so a real ``tests`` package elsewhere on sys.path always wins."""
    assert not os.path.exists(os.path.join(ROOT, "tests", "__init__.py"))
    other = tmp_path / "other" / "tests"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("WHO = 'other'\n")
    out = run("import tests; print(tests.WHO)", tmp_path, [ROOT, other.parent])
    assert out == ["other"]
