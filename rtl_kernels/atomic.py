"""Write a file under a temporary name and rename it, so an interrupted write never leaves half a file.

The file ends with the usual permissions (``0o666`` minus the process umask), so a save is as
readable as any other file the process writes; ``tempfile.mkstemp`` (or a writer that uses it)
would leave it ``0600`` and hide it from a serving process that runs as another user.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path`` (same directory)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = tmp.stat().st_mode & 0o777  # 0o666 minus the umask, read without changing the umask
    try:
        write(str(tmp))
        os.chmod(tmp, mode)  # the writer may have replaced the file with a 0600 one of its own
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
