"""Reading and writing the text files stages exchange, with errors that name file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from rlhf_lab.config import UserError


class DataError(UserError):
    pass


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)  # atomic: a killed stage never leaves half a file behind


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a JSONL file; a malformed line raises DataError naming ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            for key in required:
                if not isinstance(row.get(key), str):
                    raise DataError(f"{path}:{number}: missing string field {key!r}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def read_texts(path: str | Path, field: str) -> list[str]:
    """Texts from a ``.jsonl`` file (``field`` of each object) or any other file (one a line)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [row[field] for row in read_jsonl(path, required=(field,))]
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    texts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not texts:
        raise DataError(f"{path}: no lines")
    return texts


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
