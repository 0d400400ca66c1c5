"""The results: a table on the terminal, the issue's targets checked, and a JSON file."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.cpu import GROUPS
from bench.measure import Row

RSS_LIMIT_MB = 1.5 * 1000  # 1.5 GB


@dataclass(frozen=True)
class Target:
    name: str
    measured: float | None
    goal: float
    unit: str
    at_most: bool = False  # the goal is an upper bound

    @property
    def met(self) -> bool | None:
        if self.measured is None or math.isnan(self.measured):
            return None
        return self.measured <= self.goal if self.at_most else self.measured >= self.goal


def targets(rows: dict[str, Row]) -> list[Target]:
    def speed(mode: str) -> float | None:
        return rows[mode].jobs_per_s if mode in rows else None

    def x_raw(mode: str) -> float | None:
        """The paired ratio when measured, else the ratio of the medians."""
        if mode not in rows or "raw" not in rows:
            return None
        return rows[mode].x_raw or rows[mode].jobs_per_s / rows["raw"].jobs_per_s

    def ratio(a: str, b: str) -> float | None:
        x, y = x_raw(a), x_raw(b)
        if x is not None and y:
            return x / y  # each normalised by the raw speed of its own moment
        fa, fb = speed(a), speed(b)
        return fa / fb if fa is not None and fb else None

    found: list[Target] = [
        Target("bulk / raw", x_raw("bulk"), 0.90, "x"),
        Target("per-request / raw", x_raw("per-request"), 0.60, "x"),
        Target("per-request / naive", ratio("per-request", "naive"), 3.0, "x"),
        Target("null bulk", speed("null-bulk"), 10_000, "jobs/s"),
        Target("null per-request", speed("null-per-request"), 1_000, "jobs/s"),
    ]
    light = rows.get("light")
    if light is not None and light.extra.get("single_item_ms") is not None:
        bound = light.extra["single_item_ms"] + light.extra["max_wait_ms"] + 15
        found.append(Target("light p50 (≤ single + max_wait + 15 ms)", light.p50_ms, round(bound, 1), "ms", at_most=True))
    textq = [r.peak_rss_mb for m, r in rows.items() if m not in ("raw", "naive") and r.peak_rss_mb is not None]
    found.append(Target("textq worker peak RSS", max(textq) if textq else None, RSS_LIMIT_MB, "MB", at_most=True))
    return found


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def render(rows: dict[str, Row], found: list[Target]) -> str:
    raw = rows.get("raw")
    header = ("mode", "model", "jobs", "jobs/s", "x raw", "p50 ms", "p95 ms", "p99 ms", "peak RSS MB",
              "runs jobs/s", "runs x raw", "notes")
    lines: list[tuple[str, ...]] = [header]
    for row in rows.values():
        comparable = raw is not None and raw.jobs_per_s > 0 and row.model == raw.model and row.mode not in ("raw", "light")
        ratio = row.x_raw or (row.jobs_per_s / raw.jobs_per_s if comparable and raw else None)
        notes = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in row.extra.items() if v is not None and k != "succeeded")
        lines.append((
            row.mode, row.model, str(row.jobs), _fmt(row.jobs_per_s), _fmt(ratio, 2),
            _fmt(row.p50_ms), _fmt(row.p95_ms), _fmt(row.p99_ms), _fmt(row.peak_rss_mb, 0),
            " ".join(_fmt(x, 0) for x in row.runs_jobs_per_s), " ".join(_fmt(x, 2) for x in row.runs_x_raw), notes,
        ))
    out = _table(lines)
    out += ["", "CPU ms per job by process (cores x wall ms per job = what the machine had):", *_table(_cpu_lines(rows))]
    out += ["", "targets:"]
    for t in found:
        mark = {True: "MET", False: "MISSED", None: "n/a"}[t.met]
        bound = "≤" if t.at_most else "≥"
        out.append(f"  {mark:6}  {t.name}: {_fmt(t.measured, 2)} {t.unit} (goal {bound} {t.goal:,} {t.unit})")
    return "\n".join(out)


def _table(lines: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def _cpu_lines(rows: dict[str, Row]) -> list[tuple[str, ...]]:
    header = ("mode", *GROUPS, "total", "cores x wall")
    lines: list[tuple[str, ...]] = [header]
    cores = os.cpu_count() or 1
    for row in rows.values():
        if row.cpu_ms_per_job:
            cells = [row.cpu_ms_per_job.get(g, 0.0) for g in GROUPS]
            wall = cores * 1000 / row.jobs_per_s if row.jobs_per_s else None
            lines.append((row.mode, *(_fmt(c, 2) for c in cells), _fmt(sum(cells), 2), _fmt(wall, 2)))
    return lines


def write_json(path: Path, meta: dict[str, Any], rows: dict[str, Row], found: list[Target]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "rows": [asdict(r) for r in rows.values()],
        "targets": [{**asdict(t), "met": t.met} for t in found],
    }
    path.write_text(json.dumps(_no_nan(payload), indent=2, default=str) + "\n")


def _no_nan(value: Any) -> Any:
    """NaN (no samples) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value
