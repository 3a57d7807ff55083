"""Files of `modetune inspect`: tables, plots, and the routing page (self-contained, rendered in headless Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modetune import MoDEConfig, get_mode_model
from modetune.analysis.lens import inspect_batches, prompt_batches
from modetune.analysis.report import (
    plot_lens,
    plot_routing_by_class,
    plot_routing_heatmap,
    write_lens_tables,
    write_routing_html,
)

PROMPT = "Mia has 5 apples. She buys 3 more. <b>&</b> 8 apples."


@pytest.fixture(scope="module")
def result(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    mode = get_mode_model(base, MoDEConfig(num_layers=3))
    with torch.no_grad():
        mode.router.gate.weight.normal_()  # varied weights, so the colours differ
    return inspect_batches(mode, tokenizer, prompt_batches([PROMPT], tokenizer))


def test_tables_and_plots(result, tmp_path):
    csv_path, md_path = write_lens_tables({"model": result}, tmp_path)
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("layer,model_lens_ce,model_lens_acc,model_adapter_ce")
    assert len(lines) == 1 + result["num_model_layers"]
    md = md_path.read_text()
    assert "oracle" in md and "digits" in md
    for plot, name in ((plot_lens, "lens.png"), (plot_routing_heatmap, "r.png"), (plot_routing_by_class, "c.png")):
        arg = {"model": result} if plot is plot_lens else result
        path = plot(arg, tmp_path / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_routing_page_is_self_contained(result, tmp_path):
    page = write_routing_html(result, tmp_path / "routing.html", "routing", "tiny model")
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "http://" not in text and "https://" not in text
    tokens_html = re.search(r'<div class="example" id="example-0">(.*?)</div>', text, re.S).group(1)
    assert "&lt;" in tokens_html and "&amp;" in tokens_html and "<b" not in tokens_html  # token text is escaped
    data = re.search(r'<script type="application/json" id="inspect-data">(.*?)</script>', text, re.S).group(1)
    payload = json.loads(data.replace("<\\/", "</"))
    assert payload["late_layers"] == result["late_layers"]
    assert text.count('class="tok"') == result["tokens"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--proxy-server=127.0.0.1:9",  # network off: every request would fail
]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_routing_page_renders_and_hover_shows_weights(result, tmp_path):
    page = write_routing_html(result, tmp_path / "routing.html", "routing", "tiny model")
    # the same page plus a script that hovers the third scored token, as a mouse would
    hovered = tmp_path / "hovered.html"
    hover = (
        "<script>var t=document.querySelectorAll('.tok[data-r]')[2];"
        "t.dispatchEvent(new MouseEvent('mouseover',{bubbles:true}));</script></body></html>"
    )
    hovered.write_text(page.read_text().replace("</body></html>", hover))

    def chromium(*args: str) -> str:
        cmd = [CHROMIUM, *_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout

    dom = chromium("--dump-dom", hovered.as_uri())
    assert "apples" in dom and 'class="tok"' in dom
    panel = re.search(r'<div id="panel">(.*?)</div>\s*<script', dom, re.S).group(1)
    row = result["maps"][0]["rows"][2]
    assert "predicting" in panel and "router weight" in panel
    for layer, weight in zip(result["late_layers"], row["weights"], strict=True):
        assert f"<td>{layer}</td><td>{weight:.3f}</td>" in panel
    assert "top 5" in panel
    shot = tmp_path / "routing_hover.png"
    chromium("--window-size=1280,800", f"--screenshot={shot}", hovered.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot of the hovered routing page: {shot}")
