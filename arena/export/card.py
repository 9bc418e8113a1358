"""The dataset card (``README.md``, Hugging Face datasets style) and its PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
from lingua import Language

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from arena.export.cleaning import COMMON_LANGUAGES  # noqa: E402
from arena.export.writer import ExportState  # noqa: E402

if TYPE_CHECKING:
    from arena.export.pipeline import DatasetSpec, ExportOptions

TOP_PLOTTED = 25


def _size_category(rows: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if rows < limit:
            return name
    return "1M<n<10M"


def _sorted_counts(counter: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))


def _table(header: tuple[str, str, str], counter: dict[str, int], total: int) -> str:
    lines = [f"| {header[0]} | {header[1]} | {header[2]} |", "|---|---:|---:|"]
    for key, count in _sorted_counts(counter):
        share = 100.0 * count / total if total else 0.0
        lines.append(f"| {key} | {count:,} | {share:.1f}% |")
    return "\n".join(lines)


def _bar_plot(counter: dict[str, int], title: str, xlabel: str, path: Path) -> None:
    items = _sorted_counts(counter)[:TOP_PLOTTED]
    figure, axis = plt.subplots(figsize=(8, max(2.5, 0.32 * len(items) + 1)))
    axis.barh([name for name, _ in reversed(items)], [count for _, count in reversed(items)], color="#4C72B0")
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _turns_plot(turns: dict[str, int], path: Path) -> None:
    items = sorted((int(k), v) for k, v in turns.items())
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.bar([str(k) for k, _ in items], [v for _, v in items], color="#55A868")
    axis.set_title("User turns per row")
    axis.set_xlabel("turns")
    axis.set_ylabel("rows")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_plots(out: Path, stats: dict[str, Any], dataset: str) -> list[tuple[str, str]]:
    """PNG plots; returns ``(caption, relative path)`` pairs for the card."""
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    plots = []
    unit = "battles" if dataset == "battles" else "conversations"
    if stats["models"]:
        _bar_plot(stats["models"], f"{unit.capitalize()} per model", unit, folder / "models.png")
        plots.append((f"{unit.capitalize()} per model", "plots/models.png"))
    if stats["languages"]:
        _bar_plot(stats["languages"], "Rows per language", "rows", folder / "languages.png")
        plots.append(("Rows per language", "plots/languages.png"))
    if stats["turns"]:
        _turns_plot(stats["turns"], folder / "turns.png")
        plots.append(("User turns per row", "plots/turns.png"))
    if stats.get("winners"):
        _bar_plot(stats["winners"], "Votes by outcome", "battles", folder / "winners.png")
        plots.append(("Votes by outcome", "plots/winners.png"))
    return plots


def _iso_code(language: str) -> str | None:
    """``English`` → ``en`` (the card metadata wants ISO 639-1 codes)."""
    found = getattr(Language, language.upper(), None)
    return str(found.iso_code_639_1.name.lower()) if isinstance(found, Language) else None


def _front_matter(spec: DatasetSpec, stats: dict[str, Any]) -> str:
    languages = sorted({code for name in stats["languages"] if (code := _iso_code(name))})
    lines = [
        "---",
        "license: other",
        "license_name: arena-data-terms",
        f"pretty_name: {spec.title}",
        "size_categories:",
        f"- {_size_category(stats['rows_written'])}",
        "task_categories:",
        "- text-generation",
        "tags:",
        "- arena",
        "- human-preference" if spec.name == "battles" else "- conversations",
        "language:",
        *[f"- {code}" for code in languages],
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: data/train-*.parquet",
        "---",
    ]
    return "\n".join(lines)


def _cleaning_section(options: ExportOptions, stats: dict[str, Any], models: list[str]) -> str:
    filters = options.filters
    dedup = options.dedup
    if options.cleaner.languages == "off":
        languages = "not identified (`unknown`)"
    elif options.cleaner.languages == "all":
        languages = (
            f"all 75 lingua languages, high-accuracy mode, first {options.cleaner.language_chars} characters"
        )
    else:
        languages = (
            f"{len(COMMON_LANGUAGES)} common languages ({', '.join(n.title() for n in COMMON_LANGUAGES)}), "
            f"lingua low-accuracy mode (trigram models; fast, less reliable on short text), "
            f"first {options.cleaner.language_chars} characters"
        )
    moderation = {
        "openai": f"OpenAI moderation endpoint (`{options.cleaner.openai_model}`), per message; "
        f"{stats['moderation_fallbacks']:,} messages fell back to the local word list after API errors",
        "wordlist": "the arena's local word list (`data/moderation_words.txt`: `category: phrase`, whole words, "
        "case-insensitive); it only catches listed phrases",
        "off": "none (moderation tags are empty)",
    }[options.cleaner.moderation]
    dropped = stats["dropped"]
    pii = ", ".join(f"{kind} {count:,}" for kind, count in _sorted_counts(stats["pii"])) or "none"
    return "\n".join(
        [
            "## How it was made",
            "",
            f"- **Release**: `{options.release}`. Every id (conversation, battle, visitor) is a keyed BLAKE2b hash with a "
            "key rotated per release, so ids do not link across releases or back to the database.",
            f"- **Models**: {options.policy.describe()}; this release holds {len(models)} model(s).",
            f"- **Date range**: {filters.since or 'start'} to {filters.until or 'now'} (UTC); "
            f"timestamps are cut to the {options.time_granularity}.",
            f"- **Minimum user turns**: {filters.min_turns} ({dropped['min_turns']:,} rows dropped).",
            f"- **Deduplication** of prompts (user messages): exact (BLAKE2b of the normalised text, "
            f"{dropped['exact_duplicate']:,} dropped) and near-duplicate (MinHash of word 3-grams, LSH at Jaccard "
            f"≥ {dedup.threshold}, {dropped['near_duplicate']:,} dropped); the first occurrence is kept. "
            f"The seen-set is a Bloom filter with a {dedup.false_positive_rate:g} false-positive rate per key."
            if dedup.enabled
            else "- **Deduplication**: off.",
            "- **PII redaction**: e-mail addresses, phone numbers, payment cards (Luhn-checked), IPv4/IPv6 "
            "addresses, URLs with credentials, API keys and other long secret-like tokens, and person names "
            'introduced by a cue ("my name is", "Dr.", "Dear"...) are replaced by typed placeholders '
            "(`NAME_1`, `EMAIL_1`, ...), consistent within a row. Names without such a cue are not detected "
            "(no NER model: it would cut throughput ~100x). "
            f"Rows redacted: {stats['redacted_rows']:,}; placeholders: {pii}.",
            f"- **Language**: lingua on the first user message; {languages}.",
            f"- **Moderation**: {moderation}. Rows with a flagged message: {stats['moderation_flagged_rows']:,}.",
        ]
    )


def write_card(spec: DatasetSpec, options: ExportOptions, state: ExportState, models: list[str]) -> Path:
    """Write ``README.md`` and the plots from the export's accumulated statistics."""
    out = options.out
    stats = state.stats
    total = stats["rows_written"]
    plots = write_plots(out, stats, spec.name)
    model_header = ("model", "battles (either side)" if spec.name == "battles" else "conversations", "share")
    model_total = sum(stats["models"].values()) if spec.name == "battles" else total
    sections = [
        _front_matter(spec, stats),
        "",
        f"# {spec.title}",
        "",
        spec.description,
        "",
        f"**{total:,} rows** in {len(state.shards)} shard(s) (`data/*.parquet`, and the same rows as "
        f"`jsonl/*.jsonl`), from {stats['rows_read']:,} read; first {stats['first_timestamp'] or '-'}, "
        f"last {stats['last_timestamp'] or '-'}. `manifest.json` lists every file with its SHA-256.",
        "",
        "```python",
        "import pandas as pd",
        'df = pd.read_parquet("data/")',
        '# or: datasets.load_dataset("parquet", data_files="data/*.parquet")',
        "```",
        "",
        "## Fields",
        "",
        "| field | description |",
        "|---|---|",
        *[f"| `{name}` | {doc} |" for name, doc in spec.field_docs.items()],
        "",
        _cleaning_section(options, stats, models),
        "",
        "## Counts",
        "",
        "### Per model",
        "",
        _table(model_header, stats["models"], model_total),
        "",
        "### Per language",
        "",
        _table(("language", "rows", "share"), stats["languages"], total),
        "",
    ]
    if stats.get("winners"):
        sections += ["### Outcomes", "", _table(("winner", "battles", "share"), stats["winners"], total), ""]
    if stats["moderation_categories"]:
        sections += [
            "### Moderation categories",
            "",
            _table(("category", "rows", "share"), stats["moderation_categories"], total),
            "",
        ]
    sections += ["## Plots", ""]
    sections += [f"![{caption}]({path})\n" for caption, path in plots]
    sections += [
        "## Privacy",
        "",
        "No raw IP address, cookie or database id is exported: the database never stores IPs or cookies, "
        "ids are re-keyed per release, and message text goes through the redaction above. The "
        "`.export-state/` folder next to the data is resume state for the exporter: do not publish it.",
        "",
    ]
    path = out / "README.md"
    path.write_text("\n".join(sections), encoding="utf-8")
    return path
