"""Files `modetune inspect` writes: the lens table (JSON, CSV, Markdown, PNG), routing maps (PNG, one
self-contained HTML page) and the training curves of a run.

The HTML page has no external resources at all (inline CSS and JS, data embedded as JSON), so it opens
offline and can be attached to a report as a single file.
"""

from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path
from typing import Any

from modetune.files import atomic_save_figure

# one colour per late layer, earliest first; the final layer is always the last (grey) colour
_PALETTE = ["#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
_FINAL = "#7f7f7f"


def layer_colors(k: int) -> list[str]:
    """A colour per late layer: distinct ones for the non-final layers, grey for the final one."""
    return [_PALETTE[i % len(_PALETTE)] for i in range(k - 1)] + [_FINAL]


# --------------------------------------------------------------------------------------------------
# the lens table
# --------------------------------------------------------------------------------------------------
def lens_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per decoder layer with the columns of every inspected model ("base", "run" or "model")."""
    names = list(results)
    num_layers = results[names[0]]["num_model_layers"]
    rows = []
    for i in range(num_layers):
        row: dict[str, Any] = {"layer": i}
        for name in names:
            layer = results[name]["layers"][i]
            row[f"{name}_lens_ce"] = layer["lens_ce"]
            row[f"{name}_lens_acc"] = layer["lens_acc"]
            row[f"{name}_adapter_ce"] = layer["adapter_ce"]
            row[f"{name}_adapter_acc"] = layer["adapter_acc"]
            row[f"{name}_kl_from_final"] = layer["kl_from_final"]
            row[f"{name}_agree_final"] = layer["agree_final"]
            row[f"{name}_router_mean"] = layer["router_mean"]
            row[f"{name}_router_argmax_share"] = layer["router_argmax_share"]
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def write_lens_tables(results: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """lens.csv (every column) and lens.md (the same, rounded, plus the ensemble, oracle and router lines)."""
    rows = lens_rows(results)
    csv_path = out_dir / "lens.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md_path = out_dir / "lens.md"
    lines = ["# Per-layer lens", ""]
    header = list(rows[0])
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[h]) for h in header) + " |")
    lines += [
        "",
        "CE in nats per labelled token; acc = top-1 accuracy on the gold token; kl_from_final = KL(p_final || p_layer) "
        "in nats through the layer's adapter (what distillation minimises); agree_final = share of tokens whose "
        "top-1 token is the final layer's.",
        "",
    ]
    for name, res in results.items():
        o, r = res["oracle"], res["router"]
        lines += [
            f"## {name}",
            "",
            f"- labelled tokens: {res['tokens']}",
            f"- ensemble: CE {res['ensemble']['ce']:.4f}, acc {res['ensemble']['acc']:.4f}; "
            f"final layer alone: CE {res['final']['ce']:.4f}, acc {res['final']['acc']:.4f}",
            f"- oracle: a non-final late layer gives the gold token a higher probability than the final layer on "
            f"{o['late_beats_final_share']:.1%} of tokens; best-late-layer-per-token CE {o['oracle_ce']:.4f}",
            f"- router: mean weight {_dict_fmt(r['mean'])}; argmax share {_dict_fmt(r['argmax_share'])}; "
            f"entropy {r['entropy']:.3f} nats (max {r['max_entropy']:.3f})",
            *_router_parameter_lines(r.get("parameters")),
            "",
            "| token class | tokens | mean weight per late layer | entropy |",
            "|---|---|---|---|",
        ]
        for cls, c in r["by_token_class"].items():
            weights = _dict_fmt(c["router_mean"]) if c["tokens"] else ""
            lines.append(f"| {cls} | {c['tokens']} | {weights} | {_fmt(c['router_entropy'])} |")
        lines.append("")
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def _router_parameter_lines(params: dict[str, Any] | None) -> list[str]:
    if not params:
        return []
    bias = "none" if params["bias"] is None else ", ".join(f"L{k}: {v:.4f}" for k, v in params["bias"].items())
    return [
        f"- router gate (W_g starts at 0): max |W_g| {params['weight_max_abs']:.4f}, "
        f"norm {params['weight_norm']:.4f}; bias {bias}"
    ]


def _dict_fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"L{k}: {v:.3f}" if v is not None else f"L{k}: -" for k, v in d.items())


def plot_lens(results: dict[str, dict[str, Any]], out_path: Path) -> Path:
    """CE and top-1 accuracy per layer: the plain lens (lines) and the late layers through their adapters
    (markers), for each inspected model; the ensemble as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    styles = {"base": ("#1f77b4", "base"), "run": ("#d62728", "tuned run"), "model": ("#1f77b4", "model")}
    for metric, ax, title in (("ce", axes[0], "cross-entropy (nats)"), ("acc", axes[1], "top-1 accuracy")):
        for name, res in results.items():
            color, label = styles.get(name, ("#333333", name))
            xs = [row["layer"] for row in res["layers"]]
            ax.plot(
                xs, [row[f"lens_{metric}"] for row in res["layers"]], color=color, lw=1.2, label=f"{label}: logit lens"
            )
            late = [row for row in res["layers"] if row[f"adapter_{metric}"] is not None]
            ax.plot(
                [r["layer"] for r in late],
                [r[f"adapter_{metric}"] for r in late],
                "o",
                color=color,
                ms=6,
                mfc="none",
                label=f"{label}: late layer via its MoDE adapter",
            )
            ax.axhline(res["ensemble"][metric], color=color, ls="--", lw=1, label=f"{label}: ensemble")
        ax.set(title=title, xlabel="decoder layer")
        if metric == "ce":
            from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
        else:
            ax.set_ylim(-0.02, 1.02)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    atomic_save_figure(fig, out_path, dpi=100)
    plt.close(fig)
    return out_path


# --------------------------------------------------------------------------------------------------
# routing maps
# --------------------------------------------------------------------------------------------------
def _show(token: str) -> str:
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5")


def plot_routing_heatmap(result: dict[str, Any], out_path: Path, max_tokens: int = 96) -> Path:
    """Router weight per late layer (rows) for each labelled token of the first examples (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    late = result["late_layers"]
    columns, labels = [], []
    for example in result["maps"]:
        for row in example["rows"]:
            if row["labelled"] and len(columns) < max_tokens:
                columns.append(row["weights"])
                labels.append(_show(row["gold"]))
        if len(columns) >= max_tokens:
            break
    data = np.array(columns).T if columns else np.zeros((len(late), 1))
    width = max(6.0, min(0.16 * data.shape[1] + 2.0, 22.0))
    fig, ax = plt.subplots(figsize=(width, 1.0 + 0.45 * len(late)))
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks(range(len(late)), [f"layer {i}" for i in late])
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_title("router weight per late layer, for each predicted (labelled) token", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    fig.tight_layout()
    atomic_save_figure(fig, out_path, dpi=100)
    plt.close(fig)
    return out_path


def plot_routing_by_class(result: dict[str, Any], out_path: Path) -> Path:
    """Mean router weight per late layer, grouped by the class of the predicted token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    late = [str(i) for i in result["late_layers"]]
    classes = [c for c, v in result["router"]["by_token_class"].items() if v["tokens"]]
    colors = layer_colors(len(late))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(len(late), 1)
    for j, layer in enumerate(late):
        values = [result["router"]["by_token_class"][c]["router_mean"][layer] for c in classes]
        ax.bar([x + j * width for x in range(len(classes))], values, width, color=colors[j], label=f"layer {layer}")
    ax.set_xticks(
        [x + width * (len(late) - 1) / 2 for x in range(len(classes))],
        [f"{c}\n(n={result['router']['by_token_class'][c]['tokens']})" for c in classes],
        fontsize=8,
    )
    ax.set(ylabel="mean router weight", ylim=(0, 1), title="routing by token class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, out_path, dpi=100)
    plt.close(fig)
    return out_path


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.2em 24em 2em 1.2em;color:#222}
h1{font-size:1.3em} h2{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;font-size:.85em} td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
.example{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;line-height:1.9;white-space:pre-wrap;
 border:1px solid #ddd;padding:.5em;margin:.6em 0;border-radius:4px}
.tok{border-radius:2px;padding:1px 0;cursor:default}
.tok.prompt{color:#999}
.tok:hover,.tok.active{outline:2px solid #000}
#panel{position:fixed;top:1em;right:1em;width:22em;max-height:92vh;overflow:auto;background:#fff;border:1px solid #888;
 border-radius:6px;padding:.7em;font-size:.85em;box-shadow:0 2px 8px rgba(0,0,0,.15)}
.bar{display:inline-block;height:.8em;vertical-align:middle}
.legend span{display:inline-block;padding:0 .5em;margin-right:.4em;border-radius:3px;color:#fff}
"""

_JS = """
(function(){
  var data = JSON.parse(document.getElementById('inspect-data').textContent);
  var panel = document.getElementById('panel');
  function esc(s){return s.replace(/[&<>"]/g,function(c){return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c];});}
  function show(s){return esc(s.replace(/\\n/g,'\\u21b5').replace(/\\t/g,'\\u21e5'));}
  function render(e, r){
    var row = data.maps[e].rows[r];
    var h = '<div><b>predicting</b> <code>' + show(row.gold) + '</code> (example ' + (e+1) + ', token ' +
            row.position + (row.labelled ? '' : ', prompt: not scored') + ')</div>';
    h += '<table class="weights"><tr><th>layer</th><th>router weight</th><th></th>' +
         (row.gold_prob ? '<th>p(gold)</th>' : '') + '</tr>';
    for (var i = 0; i < data.late_layers.length; i++) {
      var w = row.weights[i];
      h += '<tr><td>' + data.late_layers[i] + '</td><td>' + w.toFixed(3) + '</td><td style="text-align:left">' +
           '<span class="bar" style="width:' + Math.round(w*120) + 'px;background:' + data.colors[i] + '"></span></td>' +
           (row.gold_prob ? '<td>' + row.gold_prob[i].toFixed(3) + '</td>' : '') + '</tr>';
    }
    h += '</table>';
    if (row.top) {
      for (var i = 0; i < data.late_layers.length; i++) {
        h += '<div style="margin-top:.4em"><b>layer ' + data.late_layers[i] + '</b> top ' + row.top[i].length + ': ';
        h += row.top[i].map(function(t){return '<code>' + show(t[0]) + '</code> ' + t[1].toFixed(3);}).join(', ');
        h += '</div>';
      }
    }
    panel.innerHTML = h;
  }
  var active = null;
  document.querySelectorAll('.tok[data-r]').forEach(function(el){
    el.addEventListener('mouseover', function(){
      if (active) active.classList.remove('active');
      active = el; el.classList.add('active');
      render(parseInt(el.dataset.e, 10), parseInt(el.dataset.r, 10));
    });
  });
})();
"""


def _token_style(weights: list[float], colors: list[str]) -> str:
    j = max(range(len(weights)), key=lambda i: weights[i])
    alpha = round(255 * (0.15 + 0.6 * weights[j])) if j < len(weights) - 1 else 0
    return f"background:{colors[j]}{alpha:02x}" if alpha else ""


def write_routing_html(result: dict[str, Any], out_path: Path, title: str, subject: str) -> Path:
    """One self-contained page: the tokens coloured by the late layer with the largest router weight;
    hovering a token shows its router weights and each late layer's top predictions."""
    late = result["late_layers"]
    colors = layer_colors(len(late))
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'\">",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(subject)}. {result['tokens']} labelled tokens. Each token is coloured by the late layer "
        "with the largest router weight for predicting it (no colour: the final layer); hover a token for its "
        "weights and each late layer's top predictions. Grey text: prompt tokens (not scored).</p>",
        '<p class="legend">'
        + "".join(
            f'<span style="background:{c}">layer {i}{" (final)" if j == len(late) - 1 else ""}</span>'
            for j, (i, c) in enumerate(zip(late, colors, strict=True))
        )
        + "</p>",
        "<h2>Router summary</h2>",
        _summary_table(result),
        "<h2>Tokens</h2>",
    ]
    for e, example in enumerate(result["maps"]):
        spans = [f'<span class="tok prompt">{html.escape(_show(example["tokens"][0]))}</span>']
        for r, row in enumerate(example["rows"]):
            cls = "tok" if row["labelled"] else "tok prompt"
            style = _token_style(row["weights"], colors) if row["labelled"] else ""
            spans.append(
                f'<span class="{cls}" data-e="{e}" data-r="{r}" style="{style}">{html.escape(_show(row["gold"]))}</span>'
            )
        parts.append(f'<div class="example" id="example-{e}">{"".join(spans)}</div>')
    payload = {"late_layers": late, "colors": colors, "maps": result["maps"]}
    data = json.dumps(payload, ensure_ascii=True).replace("</", "<\\/")
    parts += [
        '<div id="panel">Hover a token to see its router weights and each late layer\'s top predictions.</div>',
        f'<script type="application/json" id="inspect-data">{data}</script>',
        f"<script>{_JS}</script>",
        "</body></html>",
    ]
    out_path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return out_path


def _summary_table(result: dict[str, Any]) -> str:
    late = [str(i) for i in result["late_layers"]]
    r = result["router"]
    head = "".join(f"<th>layer {i}</th>" for i in late)
    rows = [
        f"<tr><th>all tokens (n={result['tokens']})</th>"
        + "".join(f"<td>{r['mean'][i]:.3f}</td>" for i in late)
        + f"<td>{r['entropy']:.3f}</td></tr>"
    ]
    for cls, c in r["by_token_class"].items():
        if not c["tokens"]:
            continue
        rows.append(
            f"<tr><th>{html.escape(cls)} (n={c['tokens']})</th>"
            + "".join(f"<td>{c['router_mean'][i]:.3f}</td>" for i in late)
            + f"<td>{c['router_entropy']:.3f}</td></tr>"
        )
    return (
        f"<table><tr><th>mean router weight</th>{head}<th>entropy (nats)</th></tr>{''.join(rows)}</table>"
        f"<p>argmax share: {html.escape(_dict_fmt(r['argmax_share']))}. Oracle: a non-final late layer beats the "
        f"final layer on {result['oracle']['late_beats_final_share']:.1%} of tokens.</p>"
    )


def write_json(payload: dict[str, Any], out_path: str | os.PathLike[str]) -> Path:
    path = Path(out_path)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
