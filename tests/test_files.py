"""modetune.files: a write that fails or is read mid-way leaves the old file whole, never half a new one."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import pytest

from modetune.files import atomic_save_figure, atomic_write_text, replace_marked_block

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_a_saved_figure_is_a_whole_png_and_leaves_no_temporary_file(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = atomic_save_figure(fig, tmp_path / "curves.png", dpi=50)
    plt.close(fig)
    assert out == tmp_path / "curves.png"
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_a_figure_that_fails_to_render_leaves_the_old_png_and_no_temporary_file(tmp_path):
    old = tmp_path / "curves.png"
    old.write_bytes(PNG_SIGNATURE + b"the old figure")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])

    def broken_draw(renderer):
        raise RuntimeError("renderer died mid-write")

    ax.draw = broken_draw
    with pytest.raises(RuntimeError, match="mid-write"):
        atomic_save_figure(fig, old, dpi=50)
    plt.close(fig)
    assert old.read_bytes() == PNG_SIGNATURE + b"the old figure"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_text_is_replaced_whole(tmp_path):
    path = atomic_write_text(tmp_path / "a.md", "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.md"]


def test_a_marked_block_is_replaced_and_the_rest_kept(tmp_path):
    page = tmp_path / "RESULTS.md"
    page.write_text("# head\n\n<!-- b -->\nold\n<!-- e -->\n\ntail\n")
    replace_marked_block(page, "<!-- b -->", "<!-- e -->", "<!-- b -->\nnew\n<!-- e -->\n")
    assert page.read_text() == "# head\n\n<!-- b -->\nnew\n<!-- e -->\n\ntail\n"


def test_a_page_whose_markers_were_deleted_is_refused_when_asked(tmp_path):
    page = tmp_path / "RESULTS.md"
    page.write_text("# head, markers deleted by hand\n")
    with pytest.raises(ValueError, match=re.escape("no <!-- b --> ... <!-- e --> markers")):
        replace_marked_block(page, "<!-- b -->", "<!-- e -->", "<!-- b -->\nnew\n<!-- e -->\n", if_missing="error")
    assert page.read_text() == "# head, markers deleted by hand\n"
