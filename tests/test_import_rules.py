"""The import rules, checked on the source: a service imports only `ftcommon`, the generated stubs
(`finetune`), its own package and third-party libraries, never another service; `ftcommon` imports no
service; `ftctl` imports no service code (it talks to services over gRPC/HTTP and may start them as
processes, `python -m services.x.server`, which is not an import)."""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# This repository's own top-level packages; anything else is the standard library or a third-party one.
FIRST_PARTY = {"services", "ftcommon", "ftctl", "finetune", "tests", "benchmarks", "scripts"}
SERVICES = sorted(p.name for p in (REPO_ROOT / "services").iterdir() if (p / "__init__.py").exists())

# Violations that are someone's work in flight, each with why; an entry that no longer matches fails.
ALLOWED: dict[tuple[str, str], str] = {}


def imported_modules(root: Path, path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module) of every import in the file, inside functions too, and of every
    importlib.import_module("...") call with a literal name."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from services import data` imports the package services.data.
            names = [f"{module}.{alias.name}" for alias in node.names] if module in FIRST_PARTY else [module]
            for name in names:
                yield node.lineno, name
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def violations(folder: str, allowed_first_party: set[str], root: Path = REPO_ROOT) -> list[str]:
    """Imports under `folder` of first-party modules other than `allowed_first_party` and their modules."""
    found = []
    for path in sorted((root / folder).rglob("*.py")):
        relative = str(path.relative_to(root))
        for line, module in imported_modules(root, path):
            top = module.split(".")[0]
            if top not in FIRST_PARTY:
                continue
            if any(module == prefix or module.startswith(prefix + ".") for prefix in allowed_first_party):
                continue
            if (relative, module) in ALLOWED:
                continue
            found.append(f"{relative}:{line} imports {module}")
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_only_ftcommon_the_stubs_and_itself(service: str) -> None:
    assert violations(f"services/{service}", {"ftcommon", "finetune", f"services.{service}"}) == []


def test_ftcommon_imports_no_service_and_no_cli() -> None:
    assert violations("ftcommon", {"ftcommon", "finetune"}) == []


def test_ftctl_imports_no_service_code() -> None:
    assert violations("ftctl", {"ftcommon", "finetune", "ftctl"}) == []


def test_the_allow_list_holds_only_live_exceptions() -> None:
    live = {
        (str(path.relative_to(REPO_ROOT)), module)
        for folder in ("services", "ftcommon", "ftctl")
        for path in (REPO_ROOT / folder).rglob("*.py")
        for _, module in imported_modules(REPO_ROOT, path)
    }
    assert set(ALLOWED) <= live, "remove allow-list entries whose import is gone"


def test_the_checker_sees_every_spelling_of_a_forbidden_import(tmp_path: Path) -> None:
    source = tmp_path / "services" / "eval" / "probe.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "import importlib\n"
        "from services.data import catalog\n"
        "from ..trainer.registry import ModelRegistry\n"
        "from services import inference\n"
        "def late():\n"
        "    import ftctl.main\n"
        "    return importlib.import_module('services.trainer.config')\n"
    )
    found = violations("services/eval", {"ftcommon", "finetune", "services.eval"}, root=tmp_path)
    assert sorted(f.split(" imports ")[1] for f in found) == [
        "ftctl.main",
        "services.data",
        "services.inference",
        "services.trainer.config",
        "services.trainer.registry",
    ]
