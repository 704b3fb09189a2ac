"""The import contract: facerecon's modules form layers, and each imports only
its own layer and those below it (docs/architecture.md has the picture).

Read from the source with `ast` (imports inside functions count too): no
module imports upwards, the module graph has no cycle, `facerecon` never
imports `data_pipeline`, no module imports another package's private
modules (`facerecon/render/_tiles.py` is for the render package only), and
the reconstruct path reaches no training module. The checker is itself
tested on small made-up graphs, so a cycle or an upward import added to the
code fails here."""

import ast
import fnmatch
import os

import pytest

from conftest import ROOT

# Lowest first. A module belongs to the first layer with a matching pattern.
LAYERS = (
    ("core", ("facerecon.params", "facerecon.camera", "facerecon.morphable",
              "facerecon.fileio", "facerecon.parallel", "facerecon.memory")),
    ("face model sources", ("facerecon.embedded_face", "facerecon.face_models")),
    ("render primitives", ("facerecon.render", "facerecon.render.*")),
    ("face render and shading", ("facerecon.face_render", "facerecon.shading")),
    ("data, models, losses, pictures", ("facerecon.data", "facerecon.data.*", "facerecon.models",
                                        "facerecon.models.*", "facerecon.losses",
                                        "facerecon.visualize")),
    ("run directory", ("facerecon.rundir", "facerecon.checkpoints", "facerecon.networks",
                       "facerecon.config_checks")),
    ("training", ("facerecon.training", "facerecon.training.*")),
    ("inference", ("facerecon.inference",)),
    ("apps", ("facerecon.reconstruct", "facerecon.evaluate", "facerecon.preview",
              "facerecon.export", "facerecon.detect", "facerecon.api",
              "facerecon.texture", "facerecon.outputs", "facerecon.video")),
    # The package itself: its `Reconstructor` attribute is the API's, imported on first use.
    ("entry points", ("main", "facerecon", "facerecon.cli", "data_pipeline", "data_pipeline.*", "benchmarks",
                      "benchmarks.*")),
)
PACKAGES = ("facerecon", "data_pipeline", "benchmarks")


def module_files(root: str) -> dict:
  """{module name: path} of main.py and every module of PACKAGES."""
  found = {"main": os.path.join(root, "main.py")}
  for package in PACKAGES:
    for directory, _, names in os.walk(os.path.join(root, package)):
      for name in names:
        if name.endswith(".py"):
          parts = os.path.relpath(os.path.join(directory, name), root)[:-3].split(os.sep)
          if parts[-1] == "__init__":
            parts = parts[:-1]
          found[".".join(parts)] = os.path.join(directory, name)
  return found


def imports_of(name: str, path: str, modules) -> set:
  """The project modules `name` imports anywhere in its source."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  is_package = path.endswith("__init__.py")
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = name.split(".") if is_package else name.split(".")[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      # `from package import module` imports the module; `from module import name`, the module.
      targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                 for alias in node.names]
    else:
      continue
    for target in targets:
      while target and target not in modules:  # `import a.b.c` of a package a.b
        target = target.rpartition(".")[0]
      if target and target != name:
        found.add(target)
  return found


def layer_of(module: str) -> int | None:
  for index, (_, patterns) in enumerate(LAYERS):
    if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
      return index
  return None


def _foreign_private_package(module: str, target: str) -> str | None:
  """The package `target` is private to (a `_name` module in it), when
  `module` is not part of that package; else None."""
  package, _, leaf = target.rpartition(".")
  inside = module == package or module.startswith(package + ".")
  return package if leaf.startswith("_") and not inside else None


def violations(graph: dict) -> list[str]:
  """What breaks the contract in `graph` ({module: modules it imports})."""
  found = []
  for module, targets in sorted(graph.items()):
    if layer_of(module) is None:
      found.append(f"{module} belongs to no layer")
      continue
    for target in sorted(targets):
      if module.startswith("facerecon") and target.startswith("data_pipeline"):
        found.append(f"{module} imports {target}: facerecon never imports data_pipeline")
      elif layer_of(target) is not None and layer_of(target) > layer_of(module):
        found.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target}, a layer "
                     f"above ({LAYERS[layer_of(target)][0]})")
      elif owner := _foreign_private_package(module, target):
        found.append(f"{module} imports {target}, private to {owner}")
  found += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
  return found


def cycles(graph: dict) -> list[list[str]]:
  """One cycle through each strongly connected component with more than one
  module (Tarjan's algorithm)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(module):
    index[module] = low[module] = len(index)
    stack.append(module)
    on_stack.add(module)
    for target in sorted(graph.get(module, ())):
      if target not in index:
        visit(target)
        low[module] = min(low[module], low[target])
      elif target in on_stack:
        low[module] = min(low[module], index[target])
    if low[module] == index[module]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == module:
          break
      if len(component) > 1:
        found.append(_cycle_in(graph, set(component)))

  for module in sorted(graph):
    if module not in index:
      visit(module)
  return found


def _cycle_in(graph: dict, component: set) -> list[str]:
  """A closed path inside a strongly connected component."""
  path, seen = [min(component)], set()
  while path[-1] not in seen:
    seen.add(path[-1])
    path.append(min(t for t in graph[path[-1]] if t in component))
  return path[path.index(path[-1]):]


def reachable(graph: dict, start: str) -> set:
  seen, todo = set(), [start]
  while todo:
    module = todo.pop()
    if module not in seen:
      seen.add(module)
      todo += graph.get(module, ())
  return seen


@pytest.fixture(scope="module")
def graph():
  modules = module_files(ROOT)
  return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_the_code_keeps_the_contract(graph):
  assert "facerecon.training.loop" in graph and "facerecon.render._tiles" in graph
  assert violations(graph) == []


def test_the_reconstruct_path_reaches_no_training_module(graph):
  for start in ("facerecon.inference", "facerecon.reconstruct"):
    assert not [m for m in reachable(graph, start) if m.startswith("facerecon.training")], start


def test_the_checker_finds_cycles_and_upward_imports():
  upward = {"facerecon.camera": {"facerecon.face_render"}, "facerecon.face_render": set()}
  assert violations(upward) == ["facerecon.camera (core) imports facerecon.face_render, a "
                                "layer above (face render and shading)"]
  cycle = {"facerecon.params": {"facerecon.camera"}, "facerecon.camera": {"facerecon.fileio"},
           "facerecon.fileio": {"facerecon.params"}}
  assert violations(cycle) == ["import cycle: facerecon.camera -> facerecon.fileio -> "
                               "facerecon.params -> facerecon.camera"]
  pipeline = {"facerecon.data.sources": {"data_pipeline.splits"}, "data_pipeline.splits": set()}
  assert violations(pipeline) == ["facerecon.data.sources imports data_pipeline.splits: "
                                  "facerecon never imports data_pipeline"]
  assert violations({"facerecon.newthing": set()}) == ["facerecon.newthing belongs to no layer"]
  private = {"facerecon.face_render": {"facerecon.render._tiles"},
             "facerecon.render.raster": {"facerecon.render._tiles"},
             "facerecon.render._tiles": set()}
  assert violations(private) == ["facerecon.face_render imports facerecon.render._tiles, "
                                 "private to facerecon.render"]


def test_relative_and_package_imports_are_resolved(tmp_path):
  package = tmp_path / "facerecon" / "render"
  package.mkdir(parents=True)
  (tmp_path / "facerecon" / "__init__.py").write_text("")
  (package / "__init__.py").write_text("from .raster import rasterize\n")
  (package / "raster.py").write_text("from . import _tiles\nimport facerecon.camera\n")
  (package / "_tiles.py").write_text("def f():\n  from facerecon.render import raster\n")
  (tmp_path / "facerecon" / "camera.py").write_text("")
  (tmp_path / "main.py").write_text("")
  modules = module_files(str(tmp_path))
  found = {name: imports_of(name, path, modules) for name, path in modules.items()}
  assert found["facerecon.render"] == {"facerecon.render.raster"}
  assert found["facerecon.render.raster"] == {"facerecon.render._tiles", "facerecon.camera"}
  assert cycles(found) == [["facerecon.render._tiles", "facerecon.render.raster",
                            "facerecon.render._tiles"]]
