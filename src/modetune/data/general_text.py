"""General English text from package registries: Jane Austen's novels and a hundred Wikipedia articles.

``modetune data fetch general-text`` gives pre-training (`modetune pretrain --corpus general`) and held-out
perplexity something other than benchmark questions, on machines whose only network is a Debian mirror
and PyPI. Both texts ship inside packages there, so they are downloaded as those packages and extracted
with the standard library alone:

* Austen: Debian's ``r-cran-janeaustenr`` (the R package janeaustenr, MIT; the novels are in the public
  domain): a ``.deb`` (an ``ar`` archive) whose ``data.tar.xz`` holds R's lazy-load database
  ``data/Rdata.rdb``/``.rdx``, one character vector (a line per element) per novel. One document per chapter.
* Wikipedia: gensim's test file ``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`` (in
  every gensim 4.4.0 file on PyPI; the smallest, a wheel, is pinned), a 2016 MediaWiki export of 206 pages
  (text CC BY-SA 3.0). One document per article, wiki markup stripped; redirects and disambiguation pages
  are dropped.

Each archive is pinned by URL, size and sha256 and downloaded with `modetune.data.fetch.download` (same
timeouts, temporary file and rename, `FetchError` offline); it is kept in ``general_text/archives/`` so a
later extraction needs no network. Each extracted file is pinned too: extraction is deterministic, and a
changed extractor or archive is refused instead of silently giving a different corpus. The output, under
the data cache (`data_cache_dir`): ``general_text/austen.jsonl`` and ``general_text/wikipedia.jsonl`` (one
``{"source", "title", "text"}`` object per line) and ``general_text/ATTRIBUTION.md`` (the articles' titles and
revision links, which CC BY-SA asks to keep with the text).

``$MODETUNE_DEBIAN_URL`` replaces ``https://deb.debian.org/debian`` (any Debian mirror: same ``pool/`` layout)
and ``$MODETUNE_PYPI_URL`` replaces ``https://files.pythonhosted.org`` (same ``packages/`` layout); the tests
serve both from 127.0.0.1.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import html
import io
import json
import lzma
import os
import re
import struct
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from modetune.data.fetch import FetchError, data_cache_dir, data_dir_entries, download, sha256_of
from modetune.errors import DataError

__all__ = [
    "ARCHIVES",
    "GENERAL_TEXT",
    "PARTS",
    "Archive",
    "Document",
    "Part",
    "fetch_general_text",
    "general_text_dir",
    "general_text_documents",
    "r_unserialize",
    "read_rdb",
    "strip_wikitext",
    "verify_part",
]

GENERAL_TEXT = "general-text"  # the name `modetune data fetch` knows it by
SUBDIR = "general_text"  # its directory in the data cache
ATTRIBUTION = "ATTRIBUTION.md"
REGISTRIES: dict[str, tuple[str, str]] = {  # registry -> (default base URL, variable that replaces it)
    "debian": ("https://deb.debian.org/debian", "MODETUNE_DEBIAN_URL"),
    "pypi": ("https://files.pythonhosted.org", "MODETUNE_PYPI_URL"),
}


class Document(NamedTuple):
    """One document of the corpus; ``url`` points at the exact source revision where there is one."""

    title: str
    text: str
    url: str = ""


# -- sources ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Archive:
    """A package file on a registry, pinned by path, size and sha256 (as `apt-cache show` / PyPI list them)."""

    filename: str
    registry: str  # key of REGISTRIES
    path: str  # below the registry's base URL
    sha256: str
    size: int

    def url(self) -> str:
        default, env = REGISTRIES[self.registry]
        return f"{(os.environ.get(env) or default).rstrip('/')}/{self.path}"


@dataclass(frozen=True)
class Part:
    """One extracted file of the corpus: the archive members it is made from, how, and its pinned bytes."""

    name: str  # "austen" -> general_text/austen.jsonl; also the "source" of its records
    archive: Archive
    members: tuple[str, ...]  # paths inside the archive (a .deb's data.tar, a wheel's zip)
    extract: Callable[[dict[str, bytes]], list[Document]]
    description: str
    license: str
    sha256: str
    size: int

    @property
    def local(self) -> str:
        return f"{SUBDIR}/{self.name}.jsonl"


ARCHIVES: dict[str, Archive] = {
    "janeaustenr": Archive(
        "r-cran-janeaustenr_1.0.0-1_all.deb",
        "debian",
        "pool/main/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb",
        "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
        1626392,
    ),
    "gensim": Archive(
        "gensim-4.4.0-cp310-cp310-win_amd64.whl",
        "pypi",
        "packages/53/fe/e483909cfbfa8cc4bfd30aa9fb5170c04316cc22f23c9906529f08fb9095/"
        "gensim-4.4.0-cp310-cp310-win_amd64.whl",
        "724b93c9b6e92cd15837048c71b7fdd38059276c85dd1f9c0375576f0aea153f",
        24395966,
    ),
}

_RDATA = "usr/lib/R/site-library/janeaustenr/data/Rdata"
_ENWIKI = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


# -- archives: .deb (ar + tar) and wheels (zip) ----------------------------------------------------------------
def read_members(path: Path, members: Iterable[str]) -> dict[str, bytes]:
    """The bytes of ``members`` of a .deb or a wheel/zip; `FetchError` names the first one missing."""
    wanted = set(members)
    if path.suffix == ".deb":
        found = _tar_members(_deb_data_tar(path.read_bytes()), wanted)
    else:
        with zipfile.ZipFile(path) as archive:
            found = {name: archive.read(name) for name in wanted if name in archive.namelist()}
    missing = sorted(wanted - found.keys())
    if missing:
        raise FetchError(f"{path.name} has no {missing[0]}; it is not the package this corpus was built from")
    return found


def _deb_data_tar(deb: bytes) -> bytes:
    """The ``data.tar.*`` member of a .deb. A .deb is an ``ar`` archive: an 8-byte magic, then per member a
    60-byte header (name 16, mtime 12, uid 6, gid 6, mode 8, size 10, magic 2) and the data, padded to even."""
    if not deb.startswith(b"!<arch>\n"):
        raise FetchError("not a Debian package (no ar archive header)")
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos : pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        pos += 60
        if name.startswith("data.tar"):
            return deb[pos : pos + size]
        pos += size + (size & 1)
    raise FetchError("the Debian package has no data.tar member")


def _tar_members(data: bytes, wanted: set[str]) -> dict[str, bytes]:
    """The regular files among ``wanted`` (paths without the leading ``./``) of a tar, compressed or not."""
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if name in wanted and member.isfile():
                extracted = tar.extractfile(member)
                if extracted is not None:
                    found[name] = extracted.read()
    return found


# -- R's serialization format and lazy-load databases ----------------------------------------------------------
_NA_INTEGER = -(2**31)
_R_SENTINELS = {254, 253, 252, 251, 250, 242, 241}  # NULL, global/base env, unbound, missing arg, ...


class _RReader:
    """A reader of R's XDR serialization (`serialize()`, version 2 or 3), for the data types R packages store
    their data in: NULL, symbols, pairlists, logical/integer/double/character vectors and lists. A vector
    with a ``names`` attribute becomes a dict; other attributes are dropped."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0
        self.refs: list[Any] = []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise FetchError("R data ends early (truncated or not R's XDR format)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def integer(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.integer()
        return n if n != -1 else (self.integer() << 32) + self.integer()  # long vectors: two words

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise FetchError("not R data in XDR format")
        version = self.integer()
        self.take(8)  # the R versions that wrote it and can read it
        if version == 3:
            self.take(self.integer())  # the native encoding's name
        elif version != 2:
            raise FetchError(f"R serialization version {version} is not supported")

    def item(self) -> Any:
        flags = self.integer()
        kind, has_attr, has_tag = flags & 0xFF, flags & 0x200, flags & 0x400
        if kind in _R_SENTINELS:
            return None
        if kind == 255:  # a reference to an earlier symbol
            index = flags >> 8 or self.integer()
            return self.refs[index - 1]
        if kind == 1:  # symbol: its name
            name = self.item()
            self.refs.append(name)
            return name
        if kind == 2:  # pairlist: (attributes), (tag), value, rest
            if has_attr:
                self.item()
            tag = self.item() if has_tag else None
            value = self.item()
            rest = self.item()
            return [(tag, value), *(rest or [])]
        if kind == 9:  # one string: its bytes, in the encoding its flags name (LATIN1 bit 2, else UTF-8/ASCII)
            n = self.integer()
            return None if n == -1 else self.take(n).decode("latin-1" if (flags >> 12) & 4 else "utf-8")
        values = self.vector(kind)
        attributes = dict(self.item() or []) if has_attr else {}
        names = attributes.get("names")
        return dict(zip(names, values, strict=True)) if names is not None else values

    def vector(self, kind: int) -> list[Any]:
        n = self.length()
        if kind in (10, 13):  # logical, integer
            return [None if v == _NA_INTEGER else v for v in struct.unpack(f">{n}i", self.take(4 * n))]
        if kind == 14:  # double
            return list(struct.unpack(f">{n}d", self.take(8 * n)))
        if kind in (16, 19, 20):  # character vector, list, expression list
            return [self.item() for _ in range(n)]
        raise FetchError(f"R data of type {kind} is not supported")


def r_unserialize(data: bytes) -> Any:
    """The object R's `serialize()` wrote to ``data`` (see `_RReader` for the types understood)."""
    reader = _RReader(data)
    reader.header()
    return reader.item()


def _rdb_object(blob: bytes, compressed: Any) -> bytes:
    """One object of a lazy-load database: a 4-byte big-endian length, then the serialized bytes compressed
    with zlib (``compressed`` TRUE) or, for ``compress = 2/3``, a type byte and bzip2/xz/zlib/raw data."""
    expected = struct.unpack(">I", blob[:4])[0]
    if compressed in (True, 1):
        data = zlib.decompress(blob[4:])
    else:
        codecs = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}
        codec = codecs.get(blob[4:5])
        if codec is None:
            raise FetchError(f"unknown compression {blob[4:5]!r} in an R lazy-load database")
        data = codec(blob[5:])
    if len(data) != expected:
        raise FetchError("an object of the R lazy-load database has the wrong length")
    return data


def read_rdb(rdx: bytes, rdb: bytes) -> dict[str, Any]:
    """The variables of an R lazy-load database (``X.rdx``: the gzipped index, ``X.rdb``: the objects)."""
    index = r_unserialize(gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else rdx)
    compressed = (index.get("compressed") or [True])[0]
    return {
        name: r_unserialize(_rdb_object(rdb[offset : offset + size], compressed))
        for name, (offset, size) in index["variables"].items()
    }


# -- Austen: novels -> chapters ----------------------------------------------------------------------------
NOVELS = {  # janeaustenr's variables, in publication order
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
_CHAPTER = re.compile(r"(?:CHAPTER|Chapter) +([0-9]+|[IVXLC]+)\.?")
_VOLUME = re.compile(r"VOLUME +([IVX]+)")
_END_LINES = {"THE END", "FINIS"}
_UNDERSCORES = re.compile(r"(?<![A-Za-z0-9_])_([^_\s](?:[^_]*[^_\s])?)_(?![A-Za-z0-9_])")


def _paragraphs(lines: list[str]) -> str:
    """Hard-wrapped lines -> paragraphs (one line each, blank line between), without Project Gutenberg's
    ``_emphasis_`` underscores and two spaces after a full stop: running text as a model sees it elsewhere."""
    paragraphs, current = [], []
    for line in [*lines, ""]:
        if line:
            current.append(line)
        elif current:
            paragraphs.append(_UNDERSCORES.sub(r"\1", re.sub(" +", " ", " ".join(current))))
            current = []
    return "\n\n".join(paragraphs)


def novel_chapters(title: str, lines: list[str | None]) -> list[Document]:
    """One document per chapter, titled ``"Emma, Volume II, Chapter III"``. The front matter (title page)
    and "THE END"/"FINIS" lines are left out; a volume heading only changes the titles that follow."""
    chapters: list[Document] = []
    volume, heading, body = "", "", None
    for raw in [*lines, "CHAPTER 0"]:  # the sentinel flushes the last chapter
        line = (raw or "").strip()
        if m := _VOLUME.fullmatch(line):
            volume = f"Volume {m[1]}, "
        elif m := _CHAPTER.fullmatch(line):
            text = _paragraphs(body or [])
            if text:
                chapters.append(Document(heading, text))
            heading, body = f"{title}, {volume}Chapter {m[1]}", []
        elif body is not None and line.upper() not in _END_LINES:
            body.append(line)
    return chapters


def austen_documents(members: dict[str, bytes]) -> list[Document]:
    """The chapters of every novel in janeaustenr's data, novels in publication order."""
    novels = read_rdb(members[f"{_RDATA}.rdx"], members[f"{_RDATA}.rdb"])
    order = [n for n in NOVELS if n in novels] + sorted(n for n in novels if n not in NOVELS)
    return [doc for name in order for doc in novel_chapters(NOVELS.get(name, name), novels[name])]


# -- Wikipedia: MediaWiki export -> plain text ------------------------------------------------------------------
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_REF = re.compile(r"<ref\b[^>]*/\s*>|<ref\b[^>]*>.*?</ref\s*>", re.I | re.S)  # self-closing ones first
_NOT_PROSE = re.compile(  # elements whose content is markup or code, not running text
    r"<(math|gallery|timeline|source|syntaxhighlight|score|imagemap|hiero|chem|ce)\b[^>]*>.*?</\1\s*>", re.I | re.S
)
_BREAK = re.compile(r"<br\b[^>]*>", re.I)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*\b[^<>]*>")
_TEMPLATE = (re.compile(r"\{\{"), re.compile(r"\}\}"))
_TABLE = (re.compile(r"^[ \t]*\{\|", re.M), re.compile(r"^[ \t]*\|\}", re.M))
_LINK = (re.compile(r"\[\["), re.compile(r"\]\]"))
_DROPPED_LINK = re.compile(r"\s*(?:file|image|category)\s*:", re.I)
_LANGUAGE_LINK = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*:")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+[ \t]*([^\]\n]*)\]")
_EMPHASIS = re.compile(r"'{2,}")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_HEADING = re.compile(r"(=+)\s*(.*?)\s*\1")
_LIST_MARK = re.compile(r"^[*#:;]+\s*")
_EMPTY_PARENS = re.compile(r"\(\s*[,;:]*\s*\)")
_PAREN_OPEN_JUNK = re.compile(r"\(\s*(?:[,;]\s*)+|\(\s+")
_PAREN_CLOSE_JUNK = re.compile(r"(?:\s*[,;])+\s*\)")
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.;:!?)])")
_SPACES = re.compile(r"[ \t\u00a0]+")
#: sections after which an article has only lists of links and references; the article ends at the first
END_SECTIONS = {
    "see also", "references", "notes", "external links", "further reading", "bibliography", "sources",
    "citations", "footnotes", "notes and references", "references and notes",
}  # fmt: skip
_DISAMBIGUATION = re.compile(r"\{\{\s*(?:[a-z -]*disambig[a-z ]*|dab|geodis|hndis)\s*[|}]", re.I)


def replace_balanced(
    text: str, opening: re.Pattern[str], closing: re.Pattern[str], replace: Callable[[str], str]
) -> str:
    """``text`` with each outermost balanced ``opening ... closing`` span (nested ones inside it) replaced by
    ``replace(inner text)``. Regular expressions cannot count nesting, which templates in templates and
    links in image captions need. An unclosed opening keeps the rest as it is; a stray closing stays."""
    tokens = re.compile(f"(?P<open>{opening.pattern})|(?P<close>{closing.pattern})", opening.flags)
    out, depth, pos, start, inner = [], 0, 0, 0, 0
    for m in tokens.finditer(text):
        if m.group("open") is not None:
            if depth == 0:
                start, inner = m.start(), m.end()
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                out += [text[pos:start], replace(text[inner : m.start()])]
                pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def _link_text(inner: str) -> str:
    """What a reader sees of ``[[inner]]``: the label of ``[[a|b]]``, the target of ``[[a]]``, nothing for
    files, images, categories and links to other languages' Wikipedias."""
    target, _, label = inner.partition("|")
    if _DROPPED_LINK.match(target) or (not label and _LANGUAGE_LINK.match(target)):
        return ""
    if label:
        return label
    target = target.strip().removeprefix(":")
    return re.sub(r"\s*\([^()]*\)$", "", target) if inner.endswith("|") else target  # [[a (b)|]] shows "a"


def _inline_markup(text: str) -> str:
    """Everything but the line structure: comments, references, templates, tables, links, tags, emphasis."""
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _NOT_PROSE.sub("", text)
    text = replace_balanced(text, *_TEMPLATE, lambda _: "")
    text = replace_balanced(text, *_TABLE, lambda _: "")
    text = replace_balanced(text, *_LINK, _link_text)
    text = _EXTERNAL_LINK.sub(r"\1", text)
    text = _BREAK.sub("\n", text)
    text = _TAG.sub("", text)
    text = _MAGIC_WORD.sub("", text)
    text = _EMPHASIS.sub("", text)
    return html.unescape(text)


def _tidy(line: str) -> str:
    """One line's spacing and the punctuation that removed templates leave, as in ``( ; born 1879)``."""
    line = _SPACES.sub(" ", line).strip()
    line = _EMPTY_PARENS.sub("", line)
    line = _PAREN_OPEN_JUNK.sub("(", line)
    line = _PAREN_CLOSE_JUNK.sub(")", line)
    return _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACES.sub(" ", line)).strip()


_LIST_ITEM = -1  # the kind of a list item in `_blocks` (headings: their level, paragraphs: 0)


def _blocks(text: str) -> list[tuple[int, str]]:
    """(kind, text) per paragraph (kind 0), list item (`_LIST_ITEM`) or heading (its level), up to the first
    end section; lines left with no letter or digit (table or template debris) are dropped."""
    blocks: list[tuple[int, str]] = []
    for raw in text.split("\n"):
        stripped = raw.strip()
        heading = _HEADING.fullmatch(stripped)
        item = _LIST_MARK.match(stripped)
        line = _tidy(heading[2] if heading else stripped[item.end() :] if item else stripped)
        if heading and line.lower() in END_SECTIONS:
            break
        if not any(c.isalnum() for c in line) or (not heading and line[:1] in "|!"):
            continue
        blocks.append((len(heading[1]) if heading else _LIST_ITEM if item else 0, line))
    return blocks


def _without_empty_sections(blocks: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Headings whose section lost all its text (a gallery, a table) are dropped: those followed by a
    heading of the same or a higher level, or by nothing."""
    kept: list[tuple[int, str]] = []
    for kind, line in reversed(blocks):
        if kind > 0 and (not kept or 0 < kept[-1][0] <= kind):
            continue
        kept.append((kind, line))
    return kept[::-1]


def strip_wikitext(text: str) -> str:
    """Plain text of an article's wikitext: headings as their own paragraphs, list items one per line,
    templates, references, tables, files, categories, comments and HTML tags removed (with their content,
    but for formatting tags), links replaced by what they show, the article cut at "See also" or
    "References". Deterministic: regular expressions and a brace counter, no parser that could change."""
    blocks = _without_empty_sections(_blocks(_inline_markup(text)))
    out = []
    for i, (kind, line) in enumerate(blocks):
        if i:
            out.append("\n" if kind == _LIST_ITEM == blocks[i - 1][0] else "\n\n")
        out.append(line)
    return "".join(out)


def is_disambiguation(title: str, text: str) -> bool:
    """A page that only lists other articles a title may refer to."""
    return title.endswith("(disambiguation)") or bool(_DISAMBIGUATION.search(text))


def wikipedia_documents(members: dict[str, bytes]) -> list[Document]:
    """One document per article of the export: main namespace, no redirects, no disambiguation pages, and
    some text left once the markup is stripped. ``url`` is the permanent link to the exported revision."""
    docs = []
    (xml,) = members.values()
    root = ET.fromstring(bz2.decompress(xml))
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    for page in root.iter(f"{ns}page"):
        title = page.findtext(f"{ns}title") or ""
        wikitext = page.findtext(f"{ns}revision/{ns}text") or ""
        if (
            page.findtext(f"{ns}ns") != "0"
            or page.find(f"{ns}redirect") is not None
            or wikitext.lstrip()[:9].upper() == "#REDIRECT"
            or is_disambiguation(title, wikitext)
        ):
            continue
        text = strip_wikitext(wikitext)
        revision = page.findtext(f"{ns}revision/{ns}id") or ""
        if text:
            docs.append(Document(title, text, f"https://en.wikipedia.org/w/index.php?oldid={revision}"))
    return docs


# -- the parts, pinned: sha256 and size of the .jsonl written (269 chapters, 98 articles) ------------------------
PARTS: tuple[Part, ...] = (
    Part(
        "austen",
        ARCHIVES["janeaustenr"],
        (f"{_RDATA}.rdx", f"{_RDATA}.rdb"),
        austen_documents,
        "Jane Austen's six novels, one document per chapter (Debian r-cran-janeaustenr 1.0.0-1)",
        "public domain (the novels); the janeaustenr package: MIT, Julia Silge",
        "10dda3018d6cf4eb197533c5ae23b51533560423d28f7a1b0d70d72dd069a741",
        4066961,
    ),
    Part(
        "wikipedia",
        ARCHIVES["gensim"],
        (_ENWIKI,),
        wikipedia_documents,
        "English Wikipedia articles of April 2016, markup stripped (gensim 4.4.0's test data)",
        "CC BY-SA 3.0, Wikipedia contributors (titles and revision links: general_text/ATTRIBUTION.md)",
        "221523fdb5f093c7a5ecc358a5501fe13458d82e6a5008c7937ba10fe7cf5351",
        2816569,
    ),
)


# -- fetch, extract, verify ----------------------------------------------------------------------------------
def general_text_dir(root: Path | None = None) -> Path:
    """``<root>/general_text``: ``root`` defaults to `data_cache_dir`."""
    return (root or data_cache_dir()) / SUBDIR


def verify_part(part: Part, root: Path | None = None) -> bool:
    """True when ``root``'s extracted file of ``part`` has the pinned size and sha256."""
    path = (root or data_cache_dir()) / part.local
    return path.is_file() and path.stat().st_size == part.size and sha256_of(path) == part.sha256


def _fetch_archive(archive: Archive, root: Path, force: bool) -> Path:
    """The archive in ``general_text/archives/``, downloaded (and checked) unless a verified copy is there."""
    dest = general_text_dir(root) / "archives" / archive.filename
    if force or not (dest.is_file() and dest.stat().st_size == archive.size and sha256_of(dest) == archive.sha256):
        default, env = REGISTRIES[archive.registry]
        fallback = f"download {default}/{archive.path} elsewhere and put it in {dest.parent} (its sha256 is checked)"
        download(archive.url(), dest, sha256=archive.sha256, size=archive.size, host=default.split("/")[2],
                 mirror_env=env, fallback=fallback)  # fmt: skip
    return dest


def _jsonl(source: str, docs: list[Document]) -> bytes:
    lines = [json.dumps({"source": source, "title": d.title, "text": d.text}, ensure_ascii=False) for d in docs]
    return "".join(f"{line}\n" for line in lines).encode()


def _write_atomically(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _attribution(docs: list[Document]) -> bytes:
    lines = [
        "# Attribution of general_text/wikipedia.jsonl",
        "",
        "Text of the English Wikipedia articles below, by the Wikipedia contributors listed in each article's",
        "history, under CC BY-SA 3.0 (Creative Commons Attribution-ShareAlike 3.0 Unported,",
        "https://creativecommons.org/licenses/by-sa/3.0/). Taken from the April 2016 export in gensim 4.4.0's",
        "test data; modified: the wiki markup, templates, references, tables and end sections were removed.",
        "Each link is the exported revision.",
        "",
        *(f"* {d.title}: {d.url}" for d in docs),
    ]
    return "\n".join(lines).encode() + b"\n"


def extract_part(part: Part, root: Path, archive_path: Path) -> Path:
    """Extract ``part`` from its (verified) archive into ``root/part.local``, refusing output that is not the
    pinned bytes: the file is written only when its sha256 matches."""
    docs = part.extract(read_members(archive_path, part.members))
    data = _jsonl(part.name, docs)
    digest = hashlib.sha256(data).hexdigest()
    if (len(data), digest) != (part.size, part.sha256):
        raise FetchError(
            f"extracting {part.local} from {part.archive.filename} gave {len(data)} bytes with sha256 "
            f"{digest[:16]}..., not the pinned {part.size} bytes, sha256 {part.sha256[:16]}...; nothing was written. "
            "The extractor in modetune.data.general_text changed or behaves differently here (update its pins "
            "if that was intended)"
        )
    dest = root / part.local
    _write_atomically(dest, data)
    if part.name == "wikipedia":
        _write_atomically(dest.with_name(ATTRIBUTION), _attribution(docs))
    return dest


def fetch_general_text(
    root: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    on_file: Callable[[Part, Path, bool], None] | None = None,
) -> list[Path]:
    """Download, extract and verify the corpus into ``root`` (default `data_cache_dir`); returns the paths of
    the .jsonl files. A part whose file is already verified is left alone (``force``: download it again).
    ``on_file(part, path, extracted)`` is called after each part."""
    target = Path(root).expanduser() if root is not None else data_cache_dir()
    paths = []
    for part in PARTS:
        done = not force and verify_part(part, target)
        path = target / part.local if done else extract_part(part, target, _fetch_archive(part.archive, target, force))
        paths.append(path)
        if on_file is not None:
            on_file(part, path, not done)
    return paths


# -- reading it --------------------------------------------------------------------------------------------
def _part_names(which: str) -> list[str]:
    names = [p.name for p in PARTS]
    if which == "all":
        return names
    if which not in names:
        allowed = ", ".join(repr(n) for n in ["all", *names])
        raise DataError(f"which={which!r} is not a part of the general-text corpus; allowed: {allowed}")
    return [which]


def _find_part(part: Part, root: Path | None) -> Path:
    """The verified file of ``part`` under ``root``, else under the data directories `modetune eval` uses."""
    roots = [root] if root is not None else [*data_dir_entries(), data_cache_dir()]
    for directory in dict.fromkeys(roots):
        path = directory / part.local
        if path.is_file():
            if not verify_part(part, directory):
                raise DataError(
                    f"{path} is not the pinned extraction (changed, or from another modetune version); run "
                    f"`modetune data fetch {GENERAL_TEXT}` to extract it again"
                )
            return path
    where = root if root is not None else data_cache_dir()
    raise DataError(
        f"the general-text corpus is not in {where} ({part.local} is missing); run `modetune data fetch "
        f"{GENERAL_TEXT}` first (it needs deb.debian.org and files.pythonhosted.org, 26 MB)"
    )


def general_text_documents(which: str = "all", root: Path | None = None) -> list[tuple[str, str]]:
    """(title, text) of each document of the fetched corpus: ``which`` is "all", "austen" (chapters of the
    novels) or "wikipedia" (articles, e.g. for held-out perplexity). ``root``: the data directory holding
    ``general_text/`` (default: ``$MODETUNE_DATA_DIR``'s entries, then the data cache). Raises `DataError`
    naming the fetch command when it has not been fetched."""
    docs = []
    for part in PARTS:
        if part.name in _part_names(which):
            for line in _find_part(part, root).read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                docs.append((record["title"], record["text"]))
    return docs
