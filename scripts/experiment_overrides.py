"""An example's params file as the ``dvc exp run -S`` overrides that turn ``params.yaml`` into it.

An example (``examples/<name>/params.yaml``) is a whole params file; run as a DVC experiment it leaves
``params.yaml`` as it is, and ``dvc exp show`` lists it beside the default. DVC takes Hydra's override
grammar: ``key=value`` changes a key, ``+key=value`` adds one, ``~key`` removes one.

usage: python scripts/experiment_overrides.py examples/study/params.yaml [--base params.yaml]
           (prints one argument a line: -S, then the override)
       python scripts/experiment_overrides.py examples/study/params.yaml --run study
           (runs it: dvc exp run -n study -S ...; `make study` does this)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import yaml

SIMPLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
KEYWORDS = {"null", "true", "false", "nan", "inf", "-inf"}


def hydra_value(value) -> str:
    """A YAML value in Hydra's override grammar: dicts {k: v}, lists [a, b], quoted strings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):  # Hydra reads 1e-05 as a string: its floats need a mantissa point
        text = repr(value)
        return text.replace("e", ".0e") if "e" in text and "." not in text else text
    if isinstance(value, str):
        if SIMPLE.match(value) and value.lower() not in KEYWORDS:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"{type(value).__name__} cannot be written as a Hydra override")


def overrides(base: dict, target: dict, prefix: str = "") -> list[str]:
    """The overrides that make ``base`` equal ``target``: changed leaves, added and removed keys (a key
    ``target`` leaves out that is null in ``base`` stays, null: the same config)."""
    out = []
    for key in sorted(set(base) | set(target), key=lambda k: (k not in base, str(k))):
        path = f"{prefix}{key}"
        if key not in target:
            if base[key] is not None:  # Hydra cannot delete a null; left out or null, the config reads null
                out.append(f"~{path}")
        elif key not in base:
            out.append(f"+{path}={hydra_value(target[key])}")
        elif isinstance(base[key], dict) and isinstance(target[key], dict) and base[key] and target[key]:
            out += overrides(base[key], target[key], f"{path}.")
        elif base[key] != target[key]:
            out.append(f"{path}={hydra_value(target[key])}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("example", type=Path)
    parser.add_argument("--base", type=Path, default=Path("params.yaml"))
    parser.add_argument("--run", metavar="NAME", help="run it as the DVC experiment NAME")
    args = parser.parse_args()
    try:
        base, target = (yaml.safe_load(p.read_text()) for p in (args.base, args.example))
    except (OSError, yaml.YAMLError) as err:  # one line naming the file, no traceback
        reason = getattr(err, "strerror", None) or " ".join(str(err).split())
        sys.exit(f"error: {getattr(err, 'filename', None) or args.example}: {reason}")
    arguments = [word for item in overrides(base, target) for word in ("-S", item)]
    if args.run:  # an argument list, never a shell line: titles hold spaces and colons
        sys.exit(subprocess.run(["dvc", "exp", "run", "-n", args.run, *arguments]).returncode)
    print("\n".join(arguments))


if __name__ == "__main__":
    main()
