"""The destination folder of `convert` and `export`: refuse one whose replacement would lose data, and write
the new folder beside it and rename it into place, so an interrupted or failed write (a full disk, a
read-only folder) leaves no half folder and a replaced one stays whole until the new one is complete.

    DESTINATION = Destination(verb="convert", thing="a checkpoint", refusal=...)   # importers.py
    DESTINATION.check(src, dst, force)              # early, before the slow part
    DESTINATION.write(src, dst, force, lambda folder: save_checkpoint(folder, ...))
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError


@dataclass(frozen=True, kw_only=True)
class Destination:
    """verb: the command ("convert"); thing: what it writes ("a checkpoint"); refusal(folder, entries): why
    --force may not replace this non-empty folder, as the rest of a sentence that starts with its path
    ("is not a checkpoint, so --force does not replace it; name a new folder"), or None when it holds a
    previous output of the command and nothing else."""

    verb: str
    thing: str
    refusal: Callable[[Path, list[Path]], str | None]

    def check(self, src: Path, dst: Path, force: bool) -> None:
        """Refuse the source itself (also through links, or a folder inside it or around it), a file, or a
        non-empty folder unless `force` is set and `refusal` has nothing against it."""
        s, d = src.resolve(), dst.resolve()
        if s == d or s in d.parents or d in s.parents:
            raise CheckpointError(f"cannot {self.verb} {src} into {dst}: the destination overlaps the source, "
                                  "and the source is never written to.")
        if d.exists() and not d.is_dir():
            raise CheckpointError(f"{dst} is a file; {self.verb} writes a folder, so name a new one.")
        try:
            entries = sorted(d.iterdir()) if d.is_dir() else []
        except OSError as e:
            raise self._error(dst, e) from None
        if not entries:
            return
        if not force:
            raise CheckpointError(f"{dst} exists and is not empty; pass --force (force=True) to replace "
                                  f"{self.thing} there.")
        why = self.refusal(d, entries)
        if why is not None:
            raise CheckpointError(f"{dst} {why}.")

    def write(self, src: Path, dst: Path, force: bool, fill: Callable[[Path], None]) -> None:
        """fill(folder) on a new folder beside `dst`, then rename it to `dst` (a link to a folder: the folder
        is replaced, the link kept). OSError and SafetensorError (no space, read-only) become CheckpointError."""
        from safetensors import SafetensorError

        target = dst.resolve()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{self.verb}-"))
        except OSError as e:
            raise self._error(dst, e) from None
        old = tmp / "old"
        try:
            fill(tmp / "new")  # a folder inside mkdtemp's private one, so it gets the usual permissions
            self.check(src, dst, force)  # again: the folder may have changed during a long write
            if target.exists():
                os.replace(target, old)
            os.replace(tmp / "new", target)
        except (OSError, SafetensorError) as e:
            raise self._error(dst, e) from None
        finally:
            if old.exists() and not target.exists():  # interrupted between the two renames
                os.replace(old, target)
            shutil.rmtree(tmp, ignore_errors=True)

    def _error(self, dst: Path, e: Exception) -> CheckpointError:
        """One sentence; the file is named, as it may be one being read (a tokenizer file), not written."""
        if isinstance(e, OSError):
            why = e.strerror or str(e) or type(e).__name__
            why += f": {e.filename}" if e.filename else ""
        else:  # safetensors reports its I/O errors as text, e.g. "... No space left on device ..."
            why = " ".join(str(e).split()) or type(e).__name__
        return CheckpointError(f"cannot write {self.thing} at {dst} ({why}).")
