"""A generated folder in the cache, made once and atomically (the demo data, the dry run's ImageNet-like data).

``cached_folder(final, generate)`` returns ``final`` when it holds the completion marker ``COMPLETE.json``.
Otherwise, under the file lock ``<final>.lock`` (so concurrent DDP ranks generate it once), it deletes an
incomplete ``final`` (an interrupted run), calls ``generate(tmp)`` on a fresh temporary folder
``<final.name>.tmp-*`` next to it, writes the dict ``generate`` returns as the marker's JSON, and renames the
temporary folder into place; on any error the temporary folder is removed and the error re-raised. A
temporary folder left by a process killed while generating (SIGTERM / SIGKILL skip that cleanup) is removed
the next time, under the lock: no live process can be writing it then.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MARKER = "COMPLETE.json"


def cached_folder(final: str | os.PathLike, generate: Callable[[Path], dict], *,
                  announce: Callable[[bool], None] | None = None) -> Path:
    """The folder ``final``, generated on first use; see the module docstring.

    ``generate(tmp)`` fills the temporary folder ``tmp`` and returns the marker's content (JSON-serializable).
    ``announce(stale)``, if given, is called under the lock just before generating; ``stale`` is True when an
    incomplete ``final`` is about to be deleted.
    """
    from filelock import FileLock

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if (final / MARKER).is_file():
        return final
    with FileLock(str(final) + ".lock"):
        if (final / MARKER).is_file():
            return final
        stale = final.exists()
        if announce is not None:
            announce(stale)
        if stale:
            shutil.rmtree(final)
        for leftover in final.parent.iterdir():  # a killed generator's temporary folder; we hold the lock
            if leftover.name.startswith(final.name + ".tmp-"):
                shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
        try:
            meta = generate(tmp)
            (tmp / MARKER).write_text(json.dumps(meta))
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
