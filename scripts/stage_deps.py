"""The project code each DVC stage runs: the import closure of its ``python -m pipelines.<stage>`` module.

A stage must depend on every project file it imports (else a change there leaves a stale result) and on
none it does not (else a change there reruns it for nothing: a report-only statistic rerunning nine
minutes of PPO). ``dvc.yaml`` lists the files; this script computes what they should be and checks it.

usage: python scripts/stage_deps.py            # each stage's code dependencies, as dvc.yaml lists them
       python scripts/stage_deps.py --check    # exit 1 naming each stage whose list differs
       python scripts/stage_deps.py --write    # rewrite dvc.yaml's code deps (data deps and comments stay)
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rlhf_lab", "pipelines")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file of a dotted project module (``pkg/mod.py`` or ``pkg/__init__.py``), relative to root."""
    path = Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def project_imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every project module a file imports, at module level or inside a function (lazy imports count)."""
    names = set()
    for node in ast.walk(ast.parse((root / path).read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {n for n in names if n.split(".")[0] in PACKAGES}


def closure(module: str, root: Path = ROOT) -> set[Path]:
    """The project files a module runs: itself and everything it imports, transitively (packages'
    ``__init__`` files included)."""
    seen: set[Path] = set()
    todo = [module_file(module, root)]
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        for name in project_imports(path, root):
            parts = name.split(".")
            todo += [module_file(".".join(parts[:i]), root) for i in range(1, len(parts) + 1)]
    return seen


def runs_code(path: Path, root: Path = ROOT) -> bool:
    """Whether a package's ``__init__`` does anything beyond its docstring and a version string."""
    body = ast.parse((root / path).read_text()).body
    inert = lambda node: isinstance(node, (ast.Expr, ast.Assign)) and isinstance(node.value, ast.Constant)  # noqa: E731
    return not all(inert(node) for node in body)


def code_deps(files: set[Path], root: Path = ROOT) -> list[str]:
    """The files as dvc.yaml lists them, sorted; a package's ``__init__`` only where it runs code."""
    return sorted(str(f) for f in files if f.name != "__init__.py" or runs_code(f, root))


def stage_modules(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, str]:
    """{stage: the module its command runs} for every ``python -m`` stage of dvc.yaml."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = {}
    for name, spec in stages.items():
        cmd = spec.get("do", spec)["cmd"].split()
        out[name] = cmd[cmd.index("-m") + 1]
    return out


def declared_code_deps(stage: str, dvc_yaml: Path = ROOT / "dvc.yaml") -> list[str]:
    spec = yaml.safe_load(dvc_yaml.read_text())["stages"][stage]
    deps = spec.get("do", spec).get("deps", [])
    return sorted(d for d in deps if d.endswith(".py") or (ROOT / d).is_dir() and d.split("/")[0] in PACKAGES)


def write_code_deps(dvc_yaml: Path = ROOT / "dvc.yaml") -> None:
    """Rewrite each stage's code deps in dvc.yaml as its import closure, keeping its data deps (paths
    from params, with their comments) first and every other line as it was."""
    modules, lines, out, stage = stage_modules(dvc_yaml), dvc_yaml.read_text().splitlines(keepends=True), [], None
    i = 0
    while i < len(lines):
        named = re.match(r"^  (\w+):\s*$", lines[i])
        stage = named.group(1) if named and named.group(1) in modules else stage
        deps = re.match(r"^(\s*)deps:\s*$", lines[i])
        out.append(lines[i])
        i += 1
        if not (deps and stage):
            continue
        indent = deps.group(1) + "  "
        while i < len(lines) and lines[i].startswith(indent + "- "):
            if not lines[i].strip()[2:].startswith(PACKAGES):  # a data dep: kept
                out.append(lines[i])
            i += 1
        out += [f"{indent}- {path}\n" for path in code_deps(closure(modules[stage]))]
    dvc_yaml.write_text("".join(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 where dvc.yaml's code deps differ")
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps")
    args = parser.parse_args()
    if args.write:
        write_code_deps()
    wrong = []
    for stage, module in stage_modules().items():
        wanted, declared = code_deps(closure(module)), declared_code_deps(stage)
        if args.check:
            if wanted != declared:
                wrong.append(f"{stage}: missing {sorted(set(wanted) - set(declared))}, "
                             f"not imported {sorted(set(declared) - set(wanted))}")  # fmt: skip
        else:
            print(f"{stage}:\n" + "\n".join(f"  - {d}" for d in wanted))
    if wrong:
        sys.exit("dvc.yaml code deps differ from the stages' imports (python scripts/stage_deps.py --write):\n"
                 + "\n".join(wrong))


if __name__ == "__main__":
    main()
