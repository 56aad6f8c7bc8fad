"""The scene loop's modules stay layered (docs/ARCHITECTURE.md): the interfaces at the bottom, the
geometry (render) and the clip merge below the loop, the synthetic scene reached only through the
oracle, and no import cycle among them (lazy imports included)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2] / "worldstereo_core"
LOOP_MODULES = ("interfaces", "render", "merge", "oracle", "pipeline")


def _imports(name: str) -> set[str]:
    """worldstereo_core modules ``name`` imports anywhere in its file (top level, functions, TYPE_CHECKING)."""
    path = ROOT / f"{name.replace('.', '/')}.py"
    if name.endswith("__init__"):
        name = name[: -len(".__init__")] if "." in name else ""
        package = name
    else:
        package = name.rsplit(".", 1)[0] if "." in name else ""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join([*base, node.module] if node.module else base)
            elif (node.module or "").startswith("worldstereo_core"):
                mod = node.module[len("worldstereo_core") + 1 :]
            else:
                continue
            out.add(mod)
            out.update(f"{mod}.{a.name}" if mod else a.name for a in node.names)
    known = _known()
    # a package import means its __init__
    return {m if m in known else f"{m}.__init__" for m in out if m in known or f"{m}.__init__" in known}


def _known() -> set[str]:
    return {str(p.relative_to(ROOT).with_suffix("")).replace("/", ".") for p in ROOT.rglob("*.py")}


def _reach(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for m in _imports(todo.pop()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_the_loop_layers():
    for low in ("interfaces", "render", "merge", "oracle", "models.generate"):
        assert "pipeline" not in _reach(low), f"{low} reaches the loop module"
    assert "synthetic" not in _imports("pipeline"), "the loop reaches the synthetic scene only through oracle"
    assert "synthetic" not in _reach("merge") and "synthetic" not in _reach("interfaces")
    for name in LOOP_MODULES:
        assert name not in _reach(name), f"{name} imports a module that imports it back"


def test_no_module_imports_one_that_imports_it_back():
    """ARCHITECTURE §2: no cycle anywhere in worldstereo_core, lazy imports included."""
    cycles = [name for name in sorted(_known()) if not name.endswith("__init__") and name in _reach(name)]
    assert not cycles, f"modules that import a module importing them back: {cycles}"


def test_models_recon_and_metrics_never_reach_the_loop():
    offenders = [
        name
        for name in sorted(_known())
        if (name.startswith(("models.", "recon.")) or name in ("metrics", "evaluate")) and "pipeline" in _reach(name)
    ]
    assert not offenders, f"these modules reach the loop module: {offenders}"


def test_load_path_never_reaches_the_test_scale_sizes():
    """ARCHITECTURE "Test-scale sizes": a checkpoint's sizes come from its own config or the released
    defaults, so no loader or model module reaches ``tiny_configs``; only the training CLI imports it."""
    importers = sorted(n for n in _known() if "tiny_configs" in _imports(n))
    assert importers and all(n.startswith("training.") for n in importers), importers
    load_path = [n for n in sorted(_known()) if n.startswith(("models.", "recon.")) or n == "checkpoint"]
    assert "models.loading" in load_path and "recon.moge" in load_path
    offenders = [n for n in load_path if "tiny_configs" in _reach(n)]
    assert not offenders, f"these load-path modules reach tiny_configs: {offenders}"


def test_nodes_never_reach_the_test_scale_sizes():
    """The nodes are the other side of the promise ``tiny_configs`` makes: no node module imports it, nor
    any core module that reaches it (lazy imports included)."""
    known = _known()
    offenders, scanned = {}, 0
    for path in sorted((ROOT.parent / "nodes").glob("*.py")):
        named = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("worldstereo_core."):
                mod = node.module[len("worldstereo_core.") :]
                named |= {mod, *(f"{mod}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                named |= {
                    a.name[len("worldstereo_core.") :] for a in node.names if a.name.startswith("worldstereo_core.")
                }
        # a package import means its __init__, as in _imports
        core = {m if m in known else f"{m}.__init__" for m in named if m in known or f"{m}.__init__" in known}
        scanned += bool(core)
        reached = core | {r for m in core for r in _reach(m)}
        if "tiny_configs" in reached:
            offenders[path.name] = sorted(core)
    assert scanned >= 8, scanned  # the scan sees the node modules' core imports
    assert not offenders, f"node modules reaching tiny_configs: {offenders}"
