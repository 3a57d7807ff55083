"""Writing files so that a killed process leaves the old file or the new one, never half of one; hashing them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = False) -> Path:
    """Write `text` (UTF-8) to a temporary file beside `path` and rename it into place. With `fsync`, the bytes
    are on disk before the rename (for a file whose presence means "everything before it is complete")."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def atomic_save_figure(fig: Figure, path: str | os.PathLike[str], **savefig_kwargs: Any) -> Path:
    """`fig.savefig` to a temporary file beside `path` (same suffix, so the format is the same) and rename it into
    place: a report regenerated while another process reads it, or killed mid-write, never leaves half a PNG."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, **savefig_kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def replace_marked_block(
    path: str | os.PathLike[str], begin: str, end: str, block: str, *, if_missing: str = "append", heading: str = ""
) -> Path:
    """Put `block` (which starts with `begin` and ends with `end`) where the file's text from `begin` through
    `end` is, leaving every other part as it was. Without the markers: append `heading` + `block`
    (``if_missing="append"``), or refuse (``"error"``: a page whose markers were deleted by hand)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in text and end in text.partition(begin)[2]:
        head, _, rest = text.partition(begin)
        text = head + block.rstrip("\n") + rest.partition(end)[2]
    elif if_missing == "error":
        raise ValueError(f"{path} has no {begin} ... {end} markers to write between")
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + heading + block.rstrip("\n") + "\n"
    return atomic_write_text(path, text)


def sha256_of(path: str | os.PathLike[str], digest: hashlib._Hash | None = None) -> hashlib._Hash:
    """Feed a file into `digest` (a new sha256 when None) in 1 MiB blocks and return it (`.hexdigest()` for the
    file's own sha256); passing one digest through several files hashes them together."""
    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest
