"""The test tree's own rule: every module under tests/ has a unique file name.

pytest imports test modules by their base name (the default ``prepend`` import mode, which the
helpers' sibling imports such as ``from tasks_testdata import ...`` rely on), so two files called
``test_cli.py`` in different folders make the second one fail to collect.
"""

import collections
import pathlib

TESTS = pathlib.Path(__file__).resolve().parent


def test_module_names_are_unique():
  by_name = collections.defaultdict(list)
  for path in TESTS.rglob("*.py"):
    if path.name not in ("__init__.py", "conftest.py"):
      by_name[path.name].append(str(path.relative_to(TESTS)))
  clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
  assert not clashes, f"rename these so their base names differ: {clashes}"
