"""The package's spine: verbs are thin absl shells over library modules, and nothing imports a verb.

A verb is a module run as ``python -m dnd_jax.<verb>``: one with a ``cli_main`` (its console script)
called under ``if __name__ == "__main__"``, or a package's ``__main__.py``. Imports are read from the
source (ast), including imports inside functions and ``from dnd_jax import <module>``.
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "dnd_jax"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_verb(name: str, tree: ast.Module) -> bool:
    if name.endswith(".__main__"):
        return True
    has_cli_main = any(isinstance(n, ast.FunctionDef) and n.name == "cli_main" for n in tree.body)
    main_guard = any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)
    return has_cli_main and main_guard


def _imports(name: str, path: Path, tree: ast.Module, modules: dict[str, Path]) -> set[str]:
    """Every dnd_jax module ``name`` imports, anywhere in the file (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules}  # from pkg import module
    return {m for m in out if m in modules and m != name}


def _graph() -> tuple[dict[str, set[str]], set[str]]:
    modules = _modules()
    graph, verbs = {}, set()
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = _imports(name, path, tree, modules)
        if _is_verb(name, tree):
            verbs.add(name)
    return graph, verbs


def test_the_verbs_are_found():
    _, verbs = _graph()
    expected = {"collect", "train", "generate", "evaluate", "experiment", "scaling", "geometry", "serve",
                "zoo_import", "weights.__main__"}
    assert {v.removeprefix("dnd_jax.") for v in verbs} == expected


def test_no_module_imports_a_verb():
    """No verb imports another verb's module, and no library module imports a verb: the verbs are leaves."""
    graph, verbs = _graph()
    bad = sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps if d in verbs)
    assert not bad, "verb modules imported (move the logic into a library module):\n" + "\n".join(bad)


def test_the_check_sees_imports_inside_functions(tmp_path):
    """The parser finds ``from dnd_jax import train`` in a function body and ``import dnd_jax.train``."""
    modules = _modules()
    src = "def f():\n    from dnd_jax import train, plan\n    import dnd_jax.generate\n"
    tree = ast.parse(src)
    assert _imports("dnd_jax.x", PKG / "x.py", tree, modules) >= {"dnd_jax.train", "dnd_jax.plan",
                                                                   "dnd_jax.generate"}


def test_every_verb_is_an_absl_shell_over_cli():
    """One CLI style: absl flags through ``dnd_jax.cli.run`` (no argparse, no bare app.run, no sys.argv)."""
    _, verbs = _graph()
    for name in sorted(verbs):
        path = _modules()[name]
        src = path.read_text()
        tree = ast.parse(src)
        imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "argparse" not in imported, name
        assert not re.search(r"\bapp\.run\(|sys\.argv", src), name
        cli_main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "cli_main")
        assert "cli.run(" in ast.unparse(cli_main), f"{name}.cli_main does not call dnd_jax.cli.run"
        assert any(isinstance(n, ast.FunctionDef) and n.name.endswith("define_flags") for n in tree.body), name
        # thin: flags, argument checks and one call into the library; no classes, no long bodies
        assert not any(isinstance(n, ast.ClassDef) for n in tree.body), f"{name} defines a class"
        assert len(src.splitlines()) <= 120, f"{name} has {len(src.splitlines())} lines: move logic to a library"


def test_console_scripts_are_the_verbs():
    """setup.py names one ``dnd-<verb>`` console script per verb, each the verb's ``cli_main``."""
    _, verbs = _graph()
    setup = (ROOT / "setup.py").read_text()
    scripts = dict(re.findall(r'"(dnd-[a-z-]+)=([\w.]+):cli_main"', setup))
    assert set(scripts.values()) == verbs
    for script, module in scripts.items():
        assert script == "dnd-" + module.removeprefix("dnd_jax.").removesuffix(".__main__").replace("_", "-")


def test_public_names_live_in_library_modules():
    """``dnd_jax.<Name>`` (the public API) is never defined in a verb."""
    import dnd_jax

    _, verbs = _graph()
    assert not {m for m in dnd_jax._EXPORTS.values() if m in verbs}


def test_setup_ranges_hold_the_installed_versions():
    """Every requirement in setup.py (dev extras included) is bounded above and satisfied by what the suite
    runs with: the ranges say what is tested, not what might work."""
    from importlib import metadata

    from packaging.requirements import Requirement

    setup = (ROOT / "setup.py").read_text()
    block = setup[setup.index("install_requires=["):setup.index("package_data=")]
    block += setup[setup.index("extras_require="):]
    reqs = [Requirement(r) for r in re.findall(r'"([A-Za-z][\w.-]*[<>=!~][^"]*)"', block)]
    assert len(reqs) >= 24
    for req in reqs:
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{req} has no upper bound"
        installed = metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} is outside {req}"
