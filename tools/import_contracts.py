"""A contract type for import-linter: no import inside a function, but the optional extras.

An import inside a function hides a dependency from the module's header (and from the layers
contract's reader); the only ones kept are the optional extras, imported when used so that the
package works without them (Sentry, Prometheus metrics, the dashboard, the in-memory test
database). Configured in pyproject.toml (`[tool.importlinter]`).
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from grimp import ImportGraph
from importlinter import Contract, ContractCheck, fields, output


@dataclass(frozen=True)
class Found:
    module: str
    line: int
    imported: str


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class Sources:
    """The package's source files, found on disk (never imported: a module with a cycle must
    still be reported, not crash the check)."""

    def __init__(self, package: str) -> None:
        spec = importlib.util.find_spec(package)  # a top-level package: not executed
        if spec is None or spec.origin is None:
            raise ValueError(f"cannot find package {package!r}")
        self.package = package
        self.root = Path(spec.origin).parent

    def path(self, module: str) -> Path | None:
        if module != self.package and not module.startswith(self.package + "."):
            return None
        parts = module.split(".")[1:]
        candidates = [self.root.joinpath(*parts, "__init__.py")]
        if parts:
            candidates.append(self.root.joinpath(*parts[:-1], parts[-1] + ".py"))
        return next((c for c in candidates if c.is_file()), None)

    def function_imports(self, module: str) -> list[Found]:
        """Every import statement inside a function (or method) body of `module`."""
        path = self.path(module)
        if path is None:
            return []
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found: list[Found] = []

        def walk(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                if in_function and isinstance(child, ast.Import):
                    found.extend(Found(module, child.lineno, a.name) for a in child.names)
                elif in_function and isinstance(child, ast.ImportFrom):
                    base = _resolve(module, is_package, child)
                    for a in child.names:
                        full = f"{base}.{a.name}"
                        found.append(Found(module, child.lineno, full if self.path(full) else base))
                walk(child, inside)

        walk(tree, False)
        return found


class NoFunctionImportsContract(Contract):
    type_name = "no_function_imports"

    package = fields.StringField()
    allowed = fields.ListField(subfield=fields.StringField(), required=False)

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        package = str(self.package)  # type: ignore[attr-defined]
        allowed = [str(a) for a in (self.allowed or [])]  # type: ignore[attr-defined]
        modules = sorted({package} | set(graph.find_descendants(package)))
        sources = Sources(package)
        broken = [
            f
            for m in modules
            for f in sources.function_imports(m)
            if not any(f.imported == a or f.imported.startswith(a + ".") for a in allowed)
        ]
        return ContractCheck(
            kept=not broken,
            metadata={"broken": [(f.module, f.line, f.imported) for f in broken]},
        )

    def render_broken_contract(self, check: ContractCheck) -> None:
        for module, line, imported in check.metadata["broken"]:
            output.print_error(
                f"{module}:{line} imports {imported} inside a function: import it at the top "
                "(a back reference: a Protocol in core, or a parameter)",
                bold=False,
            )
            output.new_line()
