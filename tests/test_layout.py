"""The package's shape (docs/api.md, "Layout"): subpackages by job, imports only downwards.

Every import counts, at the top of a module and inside its functions: a module imports only from
its own subpackage or a lower layer, the imports form no circle, nothing in the library imports
``experiment/``, and no module is much over 400 lines.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "prunelora_keras"
# lowest first; a module may import from its own layer and from any layer before it
LAYERS = ["errors", "interop", "parallel", "data", "models", "training", "methods", "evaluation", "api",
          "experiment"]
ENTRY = {"prunelora_keras", "prunelora_keras.run"}  # the flat namespace and the command's entry point
MAX_LINES = 420


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """Every package module ``name`` imports, anywhere in it (the most specific module named)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


GRAPH = {name: imports(name) for name in MODULES}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n not in ENTRY))
def test_a_module_imports_only_its_own_layer_or_lower(name):
    upward = sorted(m for m in GRAPH[name] if m not in ENTRY and layer(m) > layer(name))
    assert not upward, f"{name} (layer {LAYERS[layer(name)]}) imports from a higher layer: {upward}"
    assert "prunelora_keras" not in GRAPH[name] or MODULES[name].read_text().count(
        "from prunelora_keras import __version__") == 1, f"{name} imports the flat namespace"


def test_there_is_no_import_circle():
    seen, stack, circles = set(), [], []

    def visit(node):
        if node in stack:
            circles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for dep in sorted(GRAPH[node]):
            if dep not in ENTRY:
                visit(dep)
        stack.pop()

    for name in sorted(GRAPH):
        visit(name)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_nothing_in_the_library_imports_the_experiment():
    offenders = sorted(n for n, deps in GRAPH.items() if layer(n) < LAYERS.index("experiment")
                       and any(layer(d) == LAYERS.index("experiment") for d in deps))
    assert not offenders


def test_the_test_sees_real_imports():
    """The parser finds imports inside functions and resolves them to modules (so the checks above
    cannot pass by missing them)."""
    assert "prunelora_keras.methods.registry" in GRAPH["prunelora_keras.experiment.labels"]  # inside a function
    assert "prunelora_keras.training.step" in GRAPH["prunelora_keras.training.loop"]
    assert layer("prunelora_keras.experiment.run") == len(LAYERS) - 1 and layer("prunelora_keras.errors") == 0


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_much_over_400_lines(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


def test_every_subpackage_is_packaged():
    """pyproject.toml lists its packages: a subpackage missing there is missing from a wheel."""
    import tomllib

    listed = set(tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    subpackages = {module_name(p.parent / "__init__.py") for p in PKG.rglob("__init__.py")}
    assert subpackages <= listed, sorted(subpackages - listed)


def top_level_names(name: str) -> set[str]:
    """Every name module ``name`` binds at its top level (defs, classes, assignments, imports; a
    package's submodules), and what a PEP 562 ``__getattr__`` serves (a string-tuple's members)."""
    path, names = MODULES[name], set()
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                    names.add(sub.name)
                elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                    names.update((a.asname or a.name).split(".")[0] for a in sub.names)
                elif isinstance(sub, ast.Assign):
                    names.update(n.id for t in sub.targets for n in ast.walk(t) if isinstance(n, ast.Name))
    if "__getattr__" in names:  # lazy names: every string constant of the module may be one
        names.update(c.value for c in ast.walk(tree) if isinstance(c, ast.Constant) and isinstance(c.value, str))
    if path.name == "__init__.py":
        names.update(m.rsplit(".", 1)[1] for m in MODULES if "." in m and m.rsplit(".", 1)[0] == name)
    return names


def module_aliases(tree: ast.AST, package: str) -> dict[str, str]:
    """{local name: package module} for ``import a.b as x`` and ``from a import b`` where b is a module."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if f"{node.module}.{a.name}" in MODULES:
                    out[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name in MODULES:
                    out[a.asname] = a.name
    return out


SOURCES = sorted([*PKG.rglob("*.py"), *(PKG.parent / "tests").glob("*.py"), *(PKG.parent / "benchmarks").glob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG.parent)))
def test_every_attribute_of_a_package_module_exists(path):
    """``module.name`` (and ``monkeypatch.setattr(module, "name", ...)``) names something the module
    defines: a function moved to another module fails here, not in a slow test's subprocess."""
    tree = ast.parse(path.read_text())
    aliases = module_aliases(tree, "")
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            target = aliases[node.value.id]
            if node.attr not in top_level_names(target):
                missing.append(f"{node.value.id}.{node.attr} ({target}, line {node.lineno})")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "setattr"
              and len(node.args) >= 2 and isinstance(node.args[0], ast.Name) and node.args[0].id in aliases
              and isinstance(node.args[1], ast.Constant)):
            target = aliases[node.args[0].id]
            if node.args[1].value not in top_level_names(target):
                missing.append(f"setattr({node.args[0].id}, {node.args[1].value!r}) ({target}, line {node.lineno})")
    assert not missing, missing
