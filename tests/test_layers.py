"""The import layers of research/: import-linter's contracts (pyproject.toml) and no cycles."""

import ast
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'research'


def module_files(repo: str = REPO) -> dict[str, str]:
  """Dotted module name -> path, for every .py file of the package (a package is its __init__)."""
  out = {}
  for folder, _, names in os.walk(os.path.join(repo, PACKAGE)):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        parts = os.path.relpath(path, repo)[:-len('.py')].split(os.sep)
        out['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  return out


def imported_names(tree: ast.Module, package: str) -> list[str]:
  """Every name an import statement anywhere in the file (functions too) imports, absolute.

  `from a import b` names a.b, which is module a.b if there is one and else something in a.
  """
  names = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # Relative: up from the importing module's package.
        parts = package.split('.')[:len(package.split('.')) - node.level + 1]
        base = '.'.join(parts + ([base] if base else []))
      names += [f'{base}.{alias.name}' for alias in node.names]
  return names


def import_graph(files: dict[str, str]) -> dict[str, set[str]]:
  """Module -> the modules of the package it imports."""
  def owner(name: str) -> str | None:  # The longest module prefix of an imported name.
    while name and name not in files:
      name = name.rpartition('.')[0]
    return name or None

  graph = {}
  for module, path in files.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
    targets = {owner(name) for name in imported_names(tree, package)}
    graph[module] = {t for t in targets if t and t != module}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while not component or component[-1] != v:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_cycles_finds_a_loop_through_three_modules_and_nothing_in_a_chain():
  assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
  assert cycles({'a': {'b'}, 'b': {'c'}, 'c': set()}) == []


def test_import_graph_resolves_relative_from_and_function_level_imports(tmp_path):
  pkg = tmp_path / PACKAGE
  (pkg / 'sub').mkdir(parents=True)
  (pkg / '__init__.py').write_text('')
  (pkg / 'sub' / '__init__.py').write_text('from . import leaf\n')
  (pkg / 'sub' / 'leaf.py').write_text('def f():\n  from research import top\n')
  (pkg / 'top.py').write_text('import research.sub.leaf\nfrom research.sub import Thing\n')
  graph = import_graph(module_files(str(tmp_path)))
  assert graph == {'research': set(), 'research.sub': {'research.sub.leaf'},
                   'research.sub.leaf': {'research.top'},
                   'research.top': {'research.sub.leaf', 'research.sub'}}
  assert cycles(graph) == [['research.sub', 'research.sub.leaf', 'research.top']]


def test_no_import_cycles_between_research_modules():
  graph = import_graph(module_files())
  assert 'research.train' in graph and 'research.tools.report' in graph
  assert cycles(graph) == []


def test_lint_imports_keeps_every_contract():
  # The contracts are in pyproject.toml; `lint-imports` is the console script next to this python.
  lint = os.path.join(os.path.dirname(sys.executable), 'lint-imports')
  result = subprocess.run([lint, '--no-cache'], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  assert re.search(r'Contracts: ([4-9]|\d\d+) kept, 0 broken\.', result.stdout), result.stdout
