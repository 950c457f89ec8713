"""Turns the raw cells of a run into the summary (medians over rounds), the ratios to plain
Envoy and to each peer, and a Markdown report; writes both under the results folder.

Summary per configuration and cell: median over rounds of req/s (or streams/s), p50/p99, TTFC
and inter-chunk percentiles, CPU µs per request by process group. "Added" latencies are a
configuration's figure minus the reference's (`direct` when it ran, else `envoy`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from bench.stats import median

_WRK_METRICS = ("rps", "p50_us", "p99_us")
_CLIENT_METRICS = ("streams_per_s", "ttfc_p50_us", "ttfc_p99_us", "gap_p50_us", "gap_p99_us")
RATIO_BASES = ("envoy", "floor", "litellm", "portkey")


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Medians over rounds: summary[config][cell] = {metric: value, "cpu_us_per_request": {…}}."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for cell in result["cells"]:
        grouped[cell["config"], cell["cell"]].append(cell)
    summary: dict[str, dict[str, Any]] = defaultdict(dict)
    for (config, name), cells in grouped.items():
        metrics = _WRK_METRICS if cells[0]["tool"] == "wrk" else _CLIENT_METRICS
        entry: dict[str, Any] = {m: median([c[m] for c in cells]) for m in metrics}
        groups = {g for c in cells for g in c["cpu_us_per_request"]}
        entry["cpu_us_per_request"] = {
            g: median(
                [
                    c["cpu_us_per_request"][g]
                    for c in cells
                    if c["cpu_us_per_request"].get(g) is not None
                ]
            )
            for g in sorted(groups)
        }
        entry["valid"] = all(c["valid"] for c in cells)
        entry["machine_busy"] = median([c["machine_busy"] for c in cells])
        entry["unattributed_cores"] = median([c["unattributed_cores"] for c in cells])
        summary[config][name] = entry
    return dict(summary)


def ratios(summary: dict[str, Any]) -> dict[str, Any]:
    """Throughput of each configuration divided by each base's, per throughput cell."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for config, cells in summary.items():
        out[config] = {}
        for cell, entry in cells.items():
            metric = "rps" if "rps" in entry else "streams_per_s"
            if metric == "streams_per_s":
                continue  # paced streams are client-bound: no throughput ratio
            out[config][cell] = {
                f"to_{base}": _div(entry[metric], summary[base][cell][metric])
                for base in RATIO_BASES
                if base in summary and cell in summary[base] and base != config
            }
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def reference(summary: dict[str, Any]) -> str | None:
    return "direct" if "direct" in summary else "envoy" if "envoy" in summary else None


def write(result: dict[str, Any], folder: Path, stem: str) -> tuple[Path, Path]:
    """`<stem>.json` (raw cells + summary + ratios) and `<stem>.md` in `folder`."""
    return write_files(result, markdown(result), folder, stem)


def write_files(result: dict[str, Any], text: str, folder: Path, stem: str) -> tuple[Path, Path]:
    """`result` as `<stem>.json` and `text` as `<stem>.md` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    json_path.write_bytes(
        orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    md_path.write_text(text)
    return json_path, md_path


def _ms(us: float | None) -> str:
    return "—" if us is None else f"{us / 1000:.2f}"


def _num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _cpu(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    shown = [
        f"{g} {v:,.0f}"
        for g, v in entry["cpu_us_per_request"].items()
        if v is not None and g != "provider"
    ]
    return ", ".join(shown) or "—"


def markdown(result: dict[str, Any]) -> str:
    """The report: validity, the non-streamed and streamed tables, ratios, metering, profile."""
    summary, meta = result["summary"], result["meta"]
    configs = result["configurations"]
    ref = reference(summary)
    lines = [
        f"# aigw benchmark — {meta['started_at']} ({'smoke' if meta['smoke'] else 'full'})",
        "",
        f"Commit {meta['commit']}, {meta['cpus']} CPUs, {meta['rounds']} round(s) of "
        f"{meta['duration_s']} s per cell, configurations interleaved. "
        f"Load average at start: {', '.join(f'{x:.2f}' for x in meta['load_average_at_start'])}.",
        "",
        "**Valid run** (0 non-2xx, 0 socket errors)."
        if result["valid"]
        else "**INVALID RUN**: " + "; ".join(result["invalid"]),
        "",
    ]
    for name, reason in result["skipped"].items():
        lines.append(f"- {name} skipped: {reason.splitlines()[0][:300]}")
    for name, modes in result.get("unsupported", {}).items():
        for mode, reason in modes.items():
            lines.append(f"- {name}: {mode} requests fail, not measured ({reason[:200]})")
    lines += ["", "Versions: " + "; ".join(f"{k}: {v}" for k, v in meta["versions"].items()), ""]
    other = max((e["unattributed_cores"] for c in summary.values() for e in c.values()), default=0)
    lines += [
        f"Interference: at most {other:.2f} core(s) busy outside the measured processes and the "
        "load generators (median over rounds, worst cell).",
        "",
    ]
    lines += _json_table(summary, configs)
    lines += _stream_table(summary, configs, ref)
    lines += _extproc_per_chunk(summary, meta["chunks"])
    lines += _ratio_table(result["ratios"], configs)
    if result.get("metering"):
        m = result["metering"]
        lines += [
            "",
            f"Metering: {m['ledger_rows']:,} ledger rows for "
            f"{m['completed_requests']:,} completed gateway requests ({m['note']}).",
            "",
        ]
    if result.get("profile"):
        lines += profile_section(result["profile"])
    return "\n".join(lines) + "\n"


def _json_table(summary: dict[str, Any], configs: list[str]) -> list[str]:
    lines = [
        "## Non-streamed chat completions (wrk, 1 thread)",
        "",
        "| configuration | req/s @32 | x envoy | p50 / p99 @1 (ms) | p50 / p99 @8 (ms) "
        "| CPU µs per request @32 |",
        "|---|---|---|---|---|---|",
    ]
    base = summary.get("envoy", {}).get("json-c32", {}).get("rps")
    for config in configs:
        cells = summary.get(config, {})
        c32, c1, c8 = (cells.get(n) for n in ("json-c32", "json-c1", "json-c8"))
        rps = c32["rps"] if c32 else None
        lines.append(
            f"| {config} | {_num(rps)} | {_num(_div(rps, base), 3)} "
            f"| {_ms(c1 and c1['p50_us'])} / {_ms(c1 and c1['p99_us'])} "
            f"| {_ms(c8 and c8['p50_us'])} / {_ms(c8 and c8['p99_us'])} | {_cpu(c32)} |"
        )
    return [*lines, ""]


def _stream_table(summary: dict[str, Any], configs: list[str], ref: str | None) -> list[str]:
    lines = [
        f"## Streamed chat completions (SSE; added = minus `{ref}`)",
        "",
        "| configuration | streams/s @32 | x envoy | TTFC p50 / p99 (ms) | added TTFC p50 / p99 "
        "| inter-chunk p99 (ms) | added inter-chunk p99 | CPU µs per stream @32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    stream_cell = next((n for c in summary.values() for n in c if n.startswith("stream-")), None)
    paced_cell = next((n for c in summary.values() for n in c if n.startswith("paced-")), None)
    base = summary.get("envoy", {}).get(stream_cell or "", {}).get("rps")
    reference_paced = summary.get(ref or "", {}).get(paced_cell or "", {})
    for config in configs:
        cells = summary.get(config, {})
        stream, paced = cells.get(stream_cell or ""), cells.get(paced_cell or "")
        rps = stream["rps"] if stream else None

        def added(metric: str, paced: dict[str, Any] | None = paced) -> str:
            if not paced or not reference_paced:
                return "—"
            return _ms(paced[metric] - reference_paced[metric])

        lines.append(
            f"| {config} | {_num(rps)} | {_num(_div(rps, base), 3)} "
            f"| {_ms(paced and paced['ttfc_p50_us'])} / {_ms(paced and paced['ttfc_p99_us'])} "
            f"| {added('ttfc_p50_us')} / {added('ttfc_p99_us')} "
            f"| {_ms(paced and paced['gap_p99_us'])} | {added('gap_p99_us')} | {_cpu(stream)} |"
        )
    cells_note = f"`{stream_cell}`: wrk, chunks back to back; `{paced_cell}`: stream client"
    return [*lines, "", cells_note + ", chunks paced (see meta.paced_interval_ms).", ""]


def extproc_us_per_chunk(summary: dict[str, Any], chunks: int) -> float | None:
    """extproc's CPU per streamed chunk: what a stream costs it beyond what a non-streamed
    request does (the request phases, settling), spread over its chunks and the usage chunk."""
    cells = summary.get("gateway", {})
    stream = next((e for n, e in cells.items() if n.startswith("stream-")), None)
    request = cells.get("json-c32")
    if not stream or not request:
        return None
    per_stream = stream["cpu_us_per_request"].get("extproc")
    per_request = request["cpu_us_per_request"].get("extproc")
    if per_stream is None or per_request is None:
        return None
    return (per_stream - per_request) / (chunks + 1)


def _extproc_per_chunk(summary: dict[str, Any], chunks: int) -> list[str]:
    per_chunk = extproc_us_per_chunk(summary, chunks)
    if per_chunk is None:
        return []
    return [
        f"extproc CPU per streamed chunk: {per_chunk:.1f} µs (CPU per stream minus CPU per "
        f"non-streamed request, over {chunks} chunks + the usage chunk; target ≤ 40 µs).",
        "",
    ]


def _ratio_table(ratio: dict[str, Any], configs: list[str]) -> list[str]:
    lines = ["## Throughput ratios (same run; row ÷ column)", ""]
    cells = sorted({cell for per in ratio.values() for cell in per})
    bases = [b for b in RATIO_BASES if b in configs]
    lines.append(
        "| configuration | " + " | ".join(f"{c} ÷ {b}" for c in cells for b in bases) + " |"
    )
    lines.append("|---" * (1 + len(cells) * len(bases)) + "|")
    for config in configs:
        row = [
            _num(ratio.get(config, {}).get(c, {}).get(f"to_{b}"), 3) if b != config else "1"
            for c in cells
            for b in bases
        ]
        lines.append(f"| {config} | " + " | ".join(row) + " |")
    return [*lines, ""]


def profile_section(
    profile: dict[str, Any], title: str = "extproc", modes: tuple[str, ...] = ("json", "stream")
) -> list[str]:
    """The Markdown of a py-spy profile (bench/profile.py) of `title`'s processes."""
    if "skipped" in profile:
        return [f"## {title} profile", "", profile["skipped"], ""]
    lines = [
        f"## {title} profile (py-spy --native, {profile['rate_hz']} Hz, "
        f"{profile['seconds']} s per load)",
        "",
        "Shares of the busy samples (samples whose leaf is a wait such as `epoll_wait` are "
        "counted apart).",
        "",
    ]
    for mode in modes:
        data = profile.get(mode)
        if not data:
            continue
        lines += [
            f"### {mode}: {data['rps']:,.0f} req/s during the profile, "
            f"{data['busy_samples']:,} busy samples, {data['waiting_share']:.0%} of all waiting",
            "",
        ]
        for title, key, rows in (
            ("by kind of leaf frame", "kinds", 12),
            ("by thread", "threads", 4),
            ("self (leaf frames)", "self", 12),
            ("system calls, by caller", "syscalls", 8),
            ("inclusive (our code and the hot libraries)", "inclusive", 15),
        ):
            lines += [f"| {title} | share |", "|---|---|"]
            lines += [f"| `{r['frame']}` | {r['share']:.1%} |" for r in data[key][:rows]]
            lines.append("")
    return lines
