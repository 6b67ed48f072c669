"""The rules of `docs/architecture.md`, checked on the source: no module uses another module's private names, private
Keras / TensorFlow API only in the adapter modules, application modules of at most 500 lines, functions of at most
80 lines, and the short path of a network's options to its layers."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "sfg_keras").rglob("*.py"), *(ROOT / "applications").rglob("*.py")])
# The modules that may use private Keras / TensorFlow API, each with a test that fails when Keras changes it.
ADAPTERS = {ROOT / "sfg_keras" / "keras_adapter.py", ROOT / "sfg_keras" / "engine" / "keras_compat.py"}
MAX_APPLICATION_LINES = 500
MAX_FUNCTION_LINES = 80


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _trees():
    return [(path, ast.parse(path.read_text(), filename=str(path))) for path in SOURCES]


def _own_private_names(trees) -> set[str]:
    """Every underscore name our own code defines: functions, classes, attributes assigned anywhere."""
    names = set()
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif (isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                  and "setattr" in (getattr(node.func, "id", None), getattr(node.func, "attr", "").strip("_"))):
                names.add(node.args[1].value)  # object.__setattr__(self, "_name", ...) in frozen classes
    return {name for name in names if _private(name)}


def _module_aliases(tree) -> set[str]:
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            aliases.update(alias.asname or alias.name for alias in node.names)
    return aliases


def test_no_module_uses_another_modules_private_names():
    trees = _trees()
    own = _own_private_names(trees)
    problems = []
    for path, tree in trees:
        where = path.relative_to(ROOT)
        adapter = path in ADAPTERS
        aliases = _module_aliases(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                problems += [f"{where}:{node.lineno}: from {node.module} import {alias.name}"
                             for alias in node.names if _private(alias.name) and not adapter]
            elif isinstance(node, ast.Attribute) and (_private(node.attr) or node.attr == "__internal__"):
                owner = node.value.id if isinstance(node.value, ast.Name) else None
                if owner in ("self", "cls"):
                    continue
                if owner in aliases and owner not in ("self", "cls") and not adapter:
                    problems.append(f"{where}:{node.lineno}: {owner}.{node.attr} (a module's private name)")
                elif (node.attr not in own or node.attr == "__internal__") and not adapter:
                    problems.append(f"{where}:{node.lineno}: .{node.attr} (private Keras / TensorFlow API)")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
                  and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
                  and _private(node.args[1].value) and node.args[1].value not in own and not adapter):
                problems.append(f"{where}:{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    assert not problems, "private names used across modules (use sfg_keras.keras_adapter for Keras):\n" + "\n".join(
        problems)


def test_the_rule_catches_what_it_forbids(tmp_path):
    """The walker above flags each kind of use it forbids (it would pass vacuously otherwise)."""
    source = (
        "from sfg_keras.groups import _ENTROPY_FLOOR\n"
        "import keras\n"
        "def f(model):\n"
        "    keras._private_thing\n"
        "    model._flatten_layers()\n"
        "    getattr(model, '_loss_tracker')\n"
    )
    tree = ast.parse(source)
    kinds = set()
    aliases = _module_aliases(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(_private(a.name) for a in node.names):
            kinds.add("import")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            kinds.add("module" if isinstance(node.value, ast.Name) and node.value.id in aliases else "attribute")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr":
            kinds.add("getattr")
    assert kinds == {"import", "module", "attribute", "getattr"}
    own = _own_private_names(_trees())
    assert "_flatten_layers" not in own and "_loss_tracker" not in own


def test_application_modules_are_at_most_500_lines():
    long = {path.name: n for path in (ROOT / "applications").glob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_APPLICATION_LINES}
    assert not long, f"application modules over {MAX_APPLICATION_LINES} lines: {long}"


def test_no_function_is_longer_than_80_lines():
    long = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_options_reach_the_layer_through_the_files_the_architecture_page_lists():
    """`docs/architecture.md` lists the files a `NetworkOptions` value passes from `sfg_vgg11` to `SFGConv.__init__`;
    at most 5, each one exists, and each one names the next concept on the path."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    section = page.split("## From options to a layer", 1)[1].split("\n## ", 1)[0]
    files = re.findall(r"^\d+\. `([\w/]+\.py)`", section, flags=re.MULTILINE)
    assert 2 <= len(files) <= 5, files
    assert files[0] == "sfg_keras/models/architectures.py" and files[-1] == "sfg_keras/layers/sfg_conv.py"
    for name in files:
        assert (ROOT / name).is_file(), name
    text = {name: (ROOT / name).read_text() for name in files}
    assert "options.sfg_conv_kwargs(" in text["sfg_keras/models/architectures.py"]
    assert "sfg_conv_options(" in text["sfg_keras/models/options.py"]
    assert "def sfg_conv_options(" in text["sfg_keras/groups.py"]


@pytest.mark.parametrize("module", ["sfg_keras.groups", "sfg_keras.predictions"])
def test_vocabulary_modules_import_no_tensorflow(module):
    import subprocess
    import sys

    code = f"import sys, {module}; bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _unit(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return "applications" if parts[0] == "applications" else parts[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, tree) -> set[str]:
    """Modules `path` imports when it is imported (module level, `if TYPE_CHECKING:` blocks included; imports inside
    functions are excluded)."""
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    found, nodes = set(), list(tree.body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, (ast.If, ast.Try)):
            nodes += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                      *(h for handler in getattr(node, "handlers", []) for h in handler.body)]
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("sfg_keras", "applications")}


def _floors() -> dict[str, int]:
    page = (ROOT / "docs" / "architecture.md").read_text()
    section = page.split("## Floors", 1)[1].split("\n## ", 1)[0]
    floors = {}
    for number, units in re.findall(r"^(\d+)\. (`.*)$", section, flags=re.MULTILINE):
        for unit in re.findall(r"`([\w]+)`", units):
            floors[unit] = int(number)
    return floors


def test_every_import_goes_to_the_same_floor_or_below():
    floors = _floors()
    problems = []
    for path, tree in _trees():
        unit = _unit(path)
        if path == ROOT / "sfg_keras" / "__init__.py":
            continue  # the package itself: it only registers the Keras classes (`_registration`)
        if unit not in floors:
            problems.append(f"{path.relative_to(ROOT)}: unit {unit!r} is on no floor of docs/architecture.md")
            continue
        for name in _top_level_imports(path, tree):
            target = "applications" if name.startswith("applications") else (name.split(".") + [""])[1]
            if target and target in floors and floors[target] > floors[unit]:
                problems.append(f"{path.relative_to(ROOT)} ({unit}, floor {floors[unit]}) imports {name} "
                                f"(floor {floors[target]})")
    assert not problems, "\n".join(problems)


def test_no_import_cycle_between_modules():
    modules = {_module_name(path): _top_level_imports(path, tree) for path, tree in _trees()}
    graph = {name: {target for target in targets if target in modules and target != name}
             for name, targets in modules.items()}
    # A package's __init__ re-exporting its own modules is not a cycle worth reporting.
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(name, trail):
        visiting.add(name)
        for target in graph[name]:
            if target in visiting:
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]) if target in trail else target)
            elif target not in done:
                visit(target, trail + [target])
        visiting.discard(name)
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
