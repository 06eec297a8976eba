"""Data kept between runs in the user's cache folder: what one run computed and the next loads
instead of computing it again (botocore's parsed data files, `orchestrator.service_models`; the
rendered config files, `steps.bundles`).

- Where: `$XDG_CACHE_HOME` when absolute, as the XDG spec asks, else ~/.cache; in it
  `gamepulse-orchestrator/`, and there one folder per kind and form of data (`botocore-<version>-<form>`,
  `rendered-<form>`): a new form is a new folder, never a file misread.
- Only a private folder is read or written (`private`): the user's own, no link, and nobody else
  may write in it or in the folder holding it. A kept file holds plain data only (`PlainData`),
  so even one planted there can run no code.
- A kept file is written whole or not at all (a temporary file renamed into place), and the cache
  never fails a run: a folder that cannot be made, read or written, or a file that cannot be
  loaded, is passed over (`read_kept` answers None) and the data is computed as without a cache.
- Kept files no run wrote for a month are removed (`forget_unused`), with the folders of older
  forms they leave empty, and the temporary files of runs killed before their rename, after a day.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import stat
import tempfile
import time
from pathlib import Path

#: Kept files no run has written for this long are removed (by a run that writes one).
KEPT_FOR_SECONDS = 30 * 24 * 3600
#: A temporary file this old was left by a run killed before it renamed it into place: removed too.
LEFT_FOR_SECONDS = 24 * 3600


def cache_root() -> Path | None:
    """The orchestrator's folder in the user's cache (`$XDG_CACHE_HOME` when absolute, else
    ~/.cache), or None where the user has no home."""
    root = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(root):
        try:
            home = Path.home()
        except RuntimeError:  # no HOME and no passwd entry
            return None
        if not home.is_absolute() or home == Path("/"):
            return None
        root = str(home / ".cache")
    return Path(root) / "gamepulse-orchestrator"


def read_kept(kept: Path | None):
    """The data kept in the file `kept`; None when there is none to trust: no such file, a folder
    that is not private, a file that cannot be loaded (damaged) or holds more than plain data."""
    if kept is None or not private(kept.parent):
        return None
    try:
        with open(kept, "rb") as file:
            return PlainData(file).load()
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 -- unreadable, damaged or not plain data: computed again, kept again
        return None


def keep(kept: Path | None, data, family: str) -> None:
    """Writes `data` to the file `kept` where the next run finds it: whole or not at all (a
    temporary file renamed into place), never failing the run. `family` names the folders, beside
    `kept`'s, of this kind of data in any form (`botocore-*`), for `forget_unused`."""
    if kept is None:
        return
    temporary = None
    try:
        for folder in (kept.parent.parent, kept.parent):  # ours alone, whatever the umask
            if not folder.is_dir():
                folder.mkdir(parents=True, mode=0o700, exist_ok=True)
        if not private(kept.parent):
            return
        forget_unused(kept.parent, family)
        with tempfile.NamedTemporaryFile(dir=kept.parent, prefix=".", suffix=".tmp", delete=False) as out:
            temporary = out.name
            pickle.dump(data, out, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, kept)
    except OSError:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


class PlainData(pickle.Unpickler):
    """Loads a kept file (or a shape kept in one): dicts, lists, strings, bytes, numbers,
    booleans and None, nothing else. An unpickler finds a class or function only through
    `find_class`; refusing every one means no pickle can make it run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"a kept data file names {module}.{name}; it holds plain data only")


def private(folder: Path) -> bool:
    """The cache folder and the folder holding it are the user's own, real folders (not links),
    and nobody else may write in them: a folder another user could put files in (an
    XDG_CACHE_HOME on a shared disk, say) is never read from or written to. Asked once per run,
    once the folder exists."""
    known = _PRIVATE.get(folder)
    if known is None:
        try:
            stats = [os.lstat(each) for each in (folder.parent, folder)]
        except OSError:
            return False  # not there (yet): nothing to read, and `keep` makes it private
        known = _PRIVATE[folder] = all(stat.S_ISDIR(each.st_mode) and each.st_uid == os.getuid()
                                       and not each.st_mode & 0o022 for each in stats)
    return known


_PRIVATE: dict[Path, bool] = {}
_FORGOTTEN: set[Path] = set()


def forget_unused(current: Path, family: str) -> None:
    """Removes the kept files that no run wrote for a month from the folders `family` names beside
    `current` (this kind of data in any form or version), and the other folders they leave empty;
    once per run that writes one, so a cache in use stays put."""
    if current in _FORGOTTEN:
        return
    _FORGOTTEN.add(current)
    now = time.time()
    for folder in current.parent.glob(family):
        for pattern, kept_for in (("*.pickle", KEPT_FOR_SECONDS), (".*.tmp", LEFT_FOR_SECONDS)):
            for kept in folder.glob(pattern):
                with contextlib.suppress(OSError):
                    if kept.stat().st_mtime < now - kept_for:
                        kept.unlink()
        if folder != current:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
