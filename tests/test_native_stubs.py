"""python/mta/_native.pyi names what the extension has: every public function, class and
constant of `mta._native` has a stub, and every stub (other than type aliases) is there, so
the typed surface cannot drift from the module."""

import ast
import os

from mta import _native

STUBS = os.path.join(os.path.dirname(_native.__file__), "_native.pyi")


def test_stubs_and_module_name_the_same_things():
    tree = ast.parse(open(STUBS, encoding="utf-8").read())
    stubbed, aliases = set(), set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            stubbed.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stubbed.add(node.target.id)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    aliases.add(t.id)  # type aliases (Event = tuple[...]) exist for checkers only
    public = {n for n in dir(_native) if not n.startswith("_")}
    assert public - stubbed == set(), "in mta._native without a stub in _native.pyi"
    assert stubbed - public - {"__version__"} == set(), "stubbed in _native.pyi, not in mta._native"
    assert "envelope_lines" in stubbed and "Spool" in stubbed
