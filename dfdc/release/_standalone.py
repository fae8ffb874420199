"""What makes a bundle run on its own: dfdc's own source files and exact requirement pins.

The bundle's entry point must not reimplement the protocol (a second copy of the crop or
aggregation code is how the DFDC winner's thresholds drifted), so the very source files
prediction runs on are copied into the bundle: the import closure of ``dfdc.release.bundle`` and
``dfdc.release.predict``, found by reading their imports. The third-party imports of those files,
with everything they need in turn, are pinned to the versions installed here.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

PACKAGE = "dfdc"
ROOTS = ("dfdc.release.bundle", "dfdc.release.predict")
SOURCE = Path(__file__).parents[1]  # the dfdc package


def _imports(source: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_file(name: str) -> Path | None:
    """The source file of a ``dfdc`` module (``None`` for an attribute or another package)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    path = SOURCE.joinpath(*parts[1:])
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_closure(roots: tuple[str, ...] = ROOTS) -> tuple[list[Path], set[str]]:
    """The ``dfdc`` source files ``roots`` need (with ``__init__``) and their third-party top modules."""
    seen: set[Path] = {SOURCE / "__init__.py", Path(__file__)}  # building a bundle is not running one
    todo = [f for f in (_module_file(r) for r in roots) if f is not None]
    third_party: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen and path.name != "__init__.py":
            continue
        seen.add(path)
        seen.update(parent / "__init__.py" for parent in path.parents if SOURCE in parent.parents)
        for name in _imports(path):
            top = name.split(".")[0]
            if top == PACKAGE:
                found = _module_file(name)
                if found is not None and found not in seen:
                    todo.append(found)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.add(top)
    return sorted(seen - {Path(__file__)}), third_party


def _dist_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(top_modules: set[str]) -> list[str]:
    """``name==version`` for the distributions providing ``top_modules`` and all they require.

    Markers are evaluated for this interpreter and platform, so the list is exact for
    the Python version and platform that built the bundle (named in the file's header).
    """
    providers = metadata.packages_distributions()
    missing = sorted(m for m in top_modules if m not in providers)
    if missing:
        raise LookupError(f"no installed distribution provides {missing}")
    # (distribution, extra): an extra such as torch's ``cuda-toolkit[cudart]`` brings its own requirements
    todo = sorted({(dist, "") for mod in top_modules for dist in providers[mod]})
    seen: set[tuple[str, str]] = set()
    pins: dict[str, str] = {}
    while todo:
        name, extra = todo.pop()
        dist = metadata.distribution(name)
        key = _dist_name(dist.metadata["Name"])
        if (key, extra) in seen:
            continue
        seen.add((key, extra))
        pins[key] = dist.version
        env = {**default_environment(), "extra": extra}
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(env):
                todo.extend((req.name, e) for e in ("", *sorted(req.extras)))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def requirements_text(top_modules: set[str]) -> str:
    """The bundle's ``requirements.txt``: exact pins with the interpreter they were resolved for."""
    version = ".".join(map(str, sys.version_info[:2]))
    header = f"# exact pins of the environment that built this bundle (Python {version}, {sys.platform})\n"
    return header + "\n".join(pinned_requirements(top_modules)) + "\n"
