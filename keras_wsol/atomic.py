"""Files written whole or not at all: a temporary file next to the target, renamed into place.

A reader (a resumed run, a concurrent process, TF Serving) never sees half a
file: ``os.replace`` is atomic on one file system. On an error the temporary
file is removed and the target is left as it was.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "metrics.json")
    >>> write_json({"MaxBoxAcc": 90.0}, path)
    >>> open(path).read()
    '{\\n  "MaxBoxAcc": 90.0\\n}'
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator


@contextlib.contextmanager
def replacing(path: str, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path next to ``path``, ending in ``suffix``; on success it replaces ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.isfile(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(data: dict, path: str) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True))
