"""The package's shape: layers import downwards only, registries list what configs can name."""

import ast

import pytest
from jaxdiff.configs import default

from jaxdiff import sampling
from jaxdiff.core.errors import UserError
from jaxdiff.core.registry import Registry
from jaxdiff.diffusion.preconditioning import PRECONDITIONINGS
from jaxdiff.models import NETWORKS

from .conftest import ROOT

PACKAGE = ROOT / "jaxdiff"


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path, modules: set[str]) -> set[str]:
    """The package's modules that a file imports anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    files["jaxdiff.configs"] = ROOT / "configs" / "__init__.py"
    files |= {f"jaxdiff.configs.{p.stem}": p for p in (ROOT / "configs").glob("[!_]*.py")}
    modules = set(files)
    # The package's own __init__ only names the others lazily (and for type checkers).
    return {
        name: imported_modules(path, modules) - {name, "jaxdiff"}
        for name, path in files.items()
        if name != "jaxdiff"
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return [*path[path.index(successor) :], successor]
            if successor not in state and (cycle := visit(successor, [*path, successor])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


# The layers of the package, lowest first: each one's modules import only from
# their own layer or below (docs/README.md draws this map).
LAYERS = (
    "core",
    "configs",
    "ops",
    "models",
    "data",
    "diffusion",
    "sampling",
    "experiment",
    "generation",
    "training",
    "editing",
    "pipeline",
    "evaluation",
    "commands",
    "prepare",
)
# At most this many modules at the top of jaxdiff/, and lines in any module.
MAX_TOP_MODULES = 10
MAX_LINES = 600


def layer(module: str) -> str:
    return module.split(".")[1]


def test_the_package_imports_have_no_cycle():
    graph = import_graph()
    assert "jaxdiff.generation" in graph["jaxdiff.pipeline"]  # the graph sees the imports it should
    assert find_cycle(graph) is None


def test_every_module_is_in_a_layer_and_imports_no_higher_one():
    graph = import_graph()
    upward = []
    for module, imported in sorted(graph.items()):
        assert layer(module) in LAYERS, module
        rank = LAYERS.index(layer(module))
        upward += [
            f"{module} -> {other}" for other in imported if LAYERS.index(layer(other)) > rank
        ]
    assert upward == []


def test_the_layer_check_sees_an_upward_import():
    assert LAYERS.index(layer("jaxdiff.training.score")) > LAYERS.index(layer("jaxdiff.sampling.x"))


def test_the_tree_stays_readable():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_shared_helpers_import_nothing_of_the_package():
    graph = import_graph()
    assert graph["jaxdiff.core.common"] == set()
    assert graph["jaxdiff.core.registry"] <= {"jaxdiff.core.errors"}


def test_registry_lists_the_names_in_one_line_for_an_unknown_one():
    registry = Registry("thing.name")
    registry.register("b", fields=("x",))(lambda: 2)
    registry.register("a")(lambda: 1)
    assert registry.get("b").build() == 2 and registry.get("b").fields == ("x",)
    with pytest.raises(UserError, match=r"^unknown thing.name 'c'; choose one of a, b$"):
        registry.get("c")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(lambda: 3)
    registry.unregister("a")
    assert list(registry) == ["b"]


def test_registry_aliases_choose_their_entry_and_are_not_listed():
    registry = Registry("thing.name")
    registry.register("new", aliases=("old", "older"))(lambda: 1)
    registry.register("other")(lambda: 2)
    assert registry.get("old") is registry.get("older") is registry.get("new")
    assert registry.get("old").name == "new" and registry.get("new").aliases == ("old", "older")
    assert "old" in registry and registry.canonical("old") == "new"
    assert (registry.canonical("other"), registry.canonical("c")) == ("other", "c")
    assert list(registry) == ["new", "other"] and len(registry) == 2
    with pytest.raises(UserError, match=r"^unknown thing.name 'c'; choose one of new, other$"):
        registry.get("c")
    for taken in ("old", "new"):
        with pytest.raises(ValueError, match=f"'{taken}' is already registered"):
            registry.register("newest", aliases=(taken,))(lambda: 3)
        with pytest.raises(ValueError, match=f"'{taken}' is already registered"):
            registry.register(taken)(lambda: 3)
    registry.unregister("new")
    assert "old" not in registry and list(registry) == ["other"]
    registry.register("old")(lambda: 4)  # A removed entry's aliases are free again.


@pytest.mark.parametrize(
    "registry, group",
    [(NETWORKS, "model"), (sampling.SAMPLERS, "sampling"), (PRECONDITIONINGS, "model")],
)
def test_every_registered_field_is_a_config_field(registry, group):
    fields = default.get_config()[group]
    for name in registry:
        assert set(registry.get(name).fields) <= set(fields), name
    assert {"small_unet", "unet"} <= set(NETWORKS) and {"euler_maruyama", "pc", "ode"} <= set(
        sampling.SAMPLERS
    )
    # Runs written before the small nets' rename store their former names.
    for alias, name in [("seed_unet", "small_unet"), ("seed_unet_resize", "small_unet_resize")]:
        assert alias not in set(NETWORKS) and NETWORKS.get(alias) is NETWORKS.get(name)


def test_every_subpackage_is_installed():
    """pyproject.toml lists the packages setuptools installs: a new one must be among them."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {module_name(p) for p in PACKAGE.rglob("__init__.py")} | {"jaxdiff.configs"}
    assert found == listed


def test_the_docs_layer_map_lists_the_tree_in_layer_order():
    """docs/README.md's layer map names every package and module of jaxdiff/, lowest first."""
    text = (ROOT / "docs" / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("Around it:", 1)[0]
    mapped = [line.split()[0] for line in block.splitlines() if line.startswith("    jaxdiff/")]
    names = [
        entry.removeprefix("jaxdiff/").removesuffix("/").removesuffix(".py") for entry in mapped
    ]
    tree = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    tree |= {p.parent.name for p in PACKAGE.glob("*/__init__.py")} | {"configs"}
    assert sorted(names) == sorted(tree)
    assert names == sorted(names, key=LAYERS.index)
