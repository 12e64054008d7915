"""PNG images on disk, named by the sha256 of their bytes: ``images/ab/<sha256>.png``."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ArchivedImage(NamedTuple):
    content_hash: str  # sha256 hex of the PNG bytes
    png_path: str  # relative to the archive root (the data_dir), for Stimulus.png_path


class LostImage(FileNotFoundError):
    """An archived PNG missing, or damaged (its bytes no longer hash to its name); the message says what to do."""


class ImageArchive:
    """Content-addressed PNG store under ``root``; writes are atomic and identical images stored once."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def relative_path(self, content_hash: str) -> str:
        if not _SHA256_HEX.fullmatch(content_hash):
            raise ValueError(f"not a sha256 hex digest: {content_hash!r}")
        return f"images/{content_hash[:2]}/{content_hash}.png"

    def path(self, content_hash: str) -> Path:
        """Where the image with this hash is (or would be) stored."""
        return self.root / self.relative_path(content_hash)

    def address(self, png: bytes) -> ArchivedImage:
        """The hash and relative path PNG bytes have (or will have) in the archive; nothing is written."""
        if not png.startswith(PNG_SIGNATURE):
            raise ValueError("not PNG data (missing PNG signature)")
        content_hash = hashlib.sha256(png).hexdigest()
        return ArchivedImage(content_hash, self.relative_path(content_hash))

    def save(self, png: bytes) -> ArchivedImage:
        """Store PNG bytes (once per content, fsynced) and return their hash and relative path.

        The file appears atomically under its final name.
        """
        image = self.address(png)
        target = self.path(image.content_hash)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".png")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(png)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        return image

    def save_all(self, pngs: Iterable[bytes]) -> None:
        """`save` each of ``pngs``."""
        for png in pngs:
            self.save(png)

    def holds(self, content_hash: str) -> bool:
        """Whether the stored file exists and its bytes still hash to ``content_hash``."""
        return self.read_intact(content_hash) is not None

    def read_intact(self, content_hash: str) -> bytes | None:
        """The stored PNG bytes; None if the file is missing or its bytes no longer hash to ``content_hash``."""
        try:
            return self.read(content_hash)
        except LostImage:
            return None

    def lost(self, images: str) -> str:
        """What to tell a user whose ``images`` (how many, which) this archive lost: where to get them back."""
        return f"the image archive lost {images}: restore {self.root / 'images'}/ from a backup (README 'Backups')"

    def remove_partial_writes(self) -> int:
        """Delete the ``.tmp-*.png`` files a killed `save` left behind; how many. Call it at
        startup, while no other process writes to this archive."""
        partial = list((self.root / "images").glob("??/.tmp-*.png"))
        for path in partial:
            path.unlink(missing_ok=True)
        return len(partial)

    def read(self, content_hash: str) -> bytes:
        """The stored PNG bytes; ``LostImage`` naming the file and how to get it back if it is missing or damaged."""
        path = self.path(content_hash)
        try:
            png = path.read_bytes()
        except FileNotFoundError:
            problem = "is missing"
        else:
            if hashlib.sha256(png).hexdigest() == content_hash:
                return png
            problem = "is damaged (truncated or overwritten: its bytes no longer hash to its name)"
        raise LostImage(f"{self.lost(f'{path}, which {problem}')}; or check --data-dir: a demo's report folder "
                        "holds a copy of actmax.sqlite without images/, give its data/ subfolder")
