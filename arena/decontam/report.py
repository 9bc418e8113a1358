"""The outputs of a scan: matches.jsonl, summary.json and a self-contained report.html.

The HTML report shows the overall and per-benchmark rates, what each stage did, and every contaminated or
suspected pair side by side, with the runs of words the two texts share highlighted.
"""

from __future__ import annotations

import difflib
import html
import json
from pathlib import Path
from typing import Any

from arena.decontam.pipeline import Match
from arena.decontam.text import token_spans

MIN_SHARED_RUN = 3
DOC_CONTEXT_CHARS = 1500
MAX_MATCHES_SHOWN = 500


def write_outputs(out_dir: Path, matches: list[Match], summary: dict[str, Any]) -> None:
    """Write matches.jsonl, summary.json and report.html into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "matches.jsonl", "w", encoding="utf-8") as handle:
        for match in matches:
            handle.write(json.dumps(match.to_dict(), ensure_ascii=False) + "\n")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    (out_dir / "report.html").write_text(render_html(matches, summary), encoding="utf-8")


def shared_spans(left: str, right: str, min_run: int = MIN_SHARED_RUN) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Character spans of the word runs (at least ``min_run`` normalized tokens) that both texts contain."""
    left_tokens, right_tokens = token_spans(left), token_spans(right)
    matcher = difflib.SequenceMatcher(
        None, [t for t, _, _ in left_tokens], [t for t, _, _ in right_tokens], autojunk=False
    )
    left_spans: list[tuple[int, int]] = []
    right_spans: list[tuple[int, int]] = []
    for block in matcher.get_matching_blocks():
        if block.size >= min_run:
            left_spans.append((left_tokens[block.a][1], left_tokens[block.a + block.size - 1][2]))
            right_spans.append((right_tokens[block.b][1], right_tokens[block.b + block.size - 1][2]))
    return left_spans, right_spans


def highlight(text: str, spans: list[tuple[int, int]], window: int | None = None) -> str:
    """HTML of ``text`` with ``spans`` wrapped in <mark>; long texts are cut to ``window`` chars around the first span."""
    start, end = 0, len(text)
    if window is not None and len(text) > window:
        centre = spans[0][0] if spans else 0
        start = max(0, centre - window // 3)
        end = min(len(text), start + window)
    parts = ["… " if start > 0 else ""]
    cursor = start
    for span_start, span_end in sorted(spans):
        span_start, span_end = max(span_start, cursor), min(span_end, end)
        if span_start >= span_end:
            continue
        parts.append(html.escape(text[cursor:span_start]))
        parts.append(f"<mark>{html.escape(text[span_start:span_end])}</mark>")
        cursor = span_end
    parts.append(html.escape(text[cursor:end]))
    parts.append(" …" if end < len(text) else "")
    return "".join(parts)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _benchmark_rows(summary: dict[str, Any]) -> str:
    rows = []
    for name, entry in summary["benchmarks"].items():
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{entry['items']}</td><td>{entry['contaminated']}</td>"
            f"<td class='rate'>{_pct(entry['contaminated_rate'])}</td><td>{entry['suspected']}</td>"
            f"<td>{_pct(entry['suspected_rate'])}</td></tr>"
        )
    return "".join(rows)


def _stage_rows(summary: dict[str, Any]) -> str:
    rows = []
    for stage, counts in summary["stages"].items():
        detail = ", ".join(f"{k.replace('_', ' ')}: {_fmt(v)}" for k, v in counts.items())
        rows.append(f"<tr><td>{html.escape(stage)}</td><td>{detail}</td></tr>")
    return "".join(rows)


def _match_card(match: Match) -> str:
    left, right = shared_spans(match.item_text, match.doc_text)
    judge = ""
    if match.judge_same is not None:
        judge = f"<p class='judge'>judge: <b>{'same' if match.judge_same else 'different'}</b> — {html.escape(match.judge_reason or '')}</p>"
    elif match.judge_error:
        judge = f"<p class='judge error'>judge failed: {html.escape(match.judge_error)}</p>"
    evidence = (
        f"shared {match.ngram_shared} n-grams ({_pct(match.ngram_ratio)} of the item), "
        f"anchors {match.anchor_shared} ({_pct(match.anchor_share)}), MinHash Jaccard {_fmt(match.minhash_jaccard)}, "
        f"cosine {_fmt(match.embed_cosine)} (margin {_fmt(match.embed_margin)}), "
        f"ranker {_fmt(match.rank_probability)}" + ("; numbers changed" if match.numbers_kept is False else "")
    )
    return f"""
<section class="match {match.verdict}">
  <h3><span class="badge">{match.verdict}</span> {html.escape(match.item_id)} ↔ {html.escape(match.doc_id)}</h3>
  <p class="meta">found by {', '.join(match.found_by)}; decided by {html.escape(match.decided_by or 'nobody (no judge)')}; {evidence}</p>
  {judge}
  <div class="pair"><div><h4>benchmark item</h4><pre>{highlight(match.item_text, left, DOC_CONTEXT_CHARS)}</pre></div>
  <div><h4>training document</h4><pre>{highlight(match.doc_text, right, DOC_CONTEXT_CHARS)}</pre></div></div>
</section>"""


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1f2328;max-width:1400px}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left}
th{background:#f6f8fa}.rate{font-weight:bold}.headline{font-size:1.4rem}
.match{border:1px solid #d0d7de;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
.match.contaminated{border-left:6px solid #cf222e}.match.suspected{border-left:6px solid #bf8700}
.badge{font-size:.8rem;text-transform:uppercase;background:#eee;padding:.1rem .4rem;border-radius:4px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;padding:.5rem;max-height:28rem;overflow:auto}
mark{background:#ffd33d}.meta,.judge{color:#57606a;font-size:.9rem}.error{color:#cf222e}
"""


def render_html(matches: list[Match], summary: dict[str, Any]) -> str:
    """A self-contained HTML page (no scripts, no network) describing the scan."""
    shown = [m for m in matches if m.verdict != "clean"]
    shown.sort(key=lambda m: (m.verdict != "contaminated", m.item_index, m.doc_id))
    cleared = sum(1 for m in matches if m.verdict == "clean")
    cards = "".join(_match_card(m) for m in shown[:MAX_MATCHES_SHOWN])
    more = f"<p>{len(shown) - MAX_MATCHES_SHOWN} more pairs are in matches.jsonl.</p>" if len(shown) > MAX_MATCHES_SHOWN else ""
    skipped = summary["skipped_records"]
    skipped_html = "".join(f"<li>{html.escape(s)}</li>" for s in (skipped["benchmark"] + skipped["corpus"])[:50])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Contamination report</title><style>{_CSS}</style></head>
<body>
<h1>Contamination report</h1>
<p class="headline">{summary['contaminated_items']} of {summary['items']} benchmark items contaminated
(<b>{_pct(summary['contaminated_rate'])}</b>); {summary['suspected_items']} more suspected
({_pct(summary['suspected_rate'])}). Corpus: {summary['corpus_docs']} documents, {summary['contaminated_docs']} contaminated.</p>
<p>Stages run: {', '.join(summary['stages_run'])}.</p>
<h2>Per benchmark</h2>
<table><tr><th>benchmark</th><th>items</th><th>contaminated</th><th>rate</th><th>suspected</th><th>rate</th></tr>
{_benchmark_rows(summary)}</table>
<h2>Per stage</h2>
<table><tr><th>stage</th><th>counts</th></tr>{_stage_rows(summary)}</table>
<h2>Matches ({len(shown)}; {cleared} candidate pairs cleared by the judge)</h2>
{cards}{more}
<h2>Skipped records</h2><ul>{skipped_html or '<li>none</li>'}</ul>
</body></html>
"""
