"""Reading watchd's imports from its source, for the layering tests (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import watchd

PACKAGE = Path(watchd.__file__).parent


def module_name(path: Path) -> str:
    """The dotted name of a module file of watchd."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.AST) -> bool:
    """Whether node is an `if TYPE_CHECKING:` block (imports for type hints only)."""
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"))


def imports_of(source: str, package: str, *, hints: bool = True) -> set[str]:
    """Every module named by an import in `source` (of a module of `package`), made absolute.

    For `from m import name`: m, and m.name (`from watchd import tree` names a module too;
    where name is not a module, m.name names nothing that loads). hints=False leaves out the
    imports under `if TYPE_CHECKING:`, which never run.
    """
    found: set[str] = set()
    todo: list[ast.AST] = [ast.parse(source)]
    while todo:
        node = todo.pop()
        if not hints and is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        todo.extend(ast.iter_child_nodes(node))
    return found


def only_watchd(modules: set[str]) -> set[str]:
    return {m for m in modules if m == "watchd" or m.startswith("watchd.")}


def watchd_imports(path: Path) -> set[str]:
    """The modules of watchd (or names in them) that the file imports, hints included."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return only_watchd(imports_of(path.read_text(), package))


def source_of(module: str) -> Path | None:
    """The file of a module of watchd; None for anything else (a name in a module, say)."""
    if not module.startswith("watchd"):
        return None
    base = PACKAGE.parent.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def loaded_by(module: str) -> set[str]:
    """Every module of watchd that importing `module` loads (its packages' __init__ included),
    read from the source; hints left out."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            prefix = ".".join(parts[:i])
            path = source_of(prefix)
            if path is None or prefix in seen:
                continue
            seen.add(prefix)
            package = prefix if path.name == "__init__.py" else prefix.rpartition(".")[0]
            todo.extend(only_watchd(imports_of(path.read_text(), package, hints=False)))
    return seen


def within(module: str, names: frozenset[str] | set[str]) -> bool:
    """Whether module is one of names or inside one of them."""
    return any(module == n or module.startswith(n + ".") for n in names)
