"""`textq demo`: the whole path on one machine, with nothing to set up beforehand."""

from __future__ import annotations

import shutil
from collections.abc import Sequence

import click

from producer.contract import JobView
from producer.local_stack import local_stack, stop_on_signals

ARTICLE = (
    "The city council met on Tuesday to discuss the new riverside park. Residents have asked for more "
    "green space for years. The council approved a budget of two million dollars for the project. "
    "Construction will begin in the spring and should finish by next winter. Some residents worried "
    "about noise during construction. The mayor said the park would include a playground, a cycle "
    "path and a small lake. Local businesses expect more visitors once it opens."
)

SAMPLES: list[dict[str, object]] = [
    {"task": "classify", "model": "sentiment", "text": "I loved it, the best meal I've had all year."},
    {"task": "classify", "model": "sentiment", "text": "The delivery was late and the box was damaged."},
    {"task": "classify", "model": "zero-shot", "text": "The striker scored twice in the final minutes.",
     "labels": ["sports", "politics", "business", "science"]},
    {"task": "classify", "model": "zero-shot", "text": "The central bank raised interest rates again.",
     "labels": ["sports", "politics", "business", "science"]},
    {"task": "summarize", "model": "summarize", "text": ARTICLE, "max_sentences": 2},
    {"task": "summarize", "model": "abstractive", "text": ARTICLE, "max_words": 30},
]
# The demo's worker loads only what its samples use: the translate/answer model (Qwen, ~2 GB) would
# add minutes to a first run and serve nothing here. `textq console` serves every model.
DEMO_MODELS = sorted({str(sample["model"]) for sample in SAMPLES})


def describe(view: JobView) -> str:
    if view.status != "succeeded":
        return f"{view.error_type}: {view.error_message}"
    out = view.output
    if "label" in out:
        return f"{out['label']} ({out['score']:.2f})"
    return str(out["summary"])


def render_table(views: Sequence[JobView], texts: Sequence[str]) -> str:
    width = shutil.get_terminal_size((120, 20)).columns
    rows = [("model", "status", "ms", "input", "result")]
    for view, text in zip(views, texts, strict=True):
        ms = f"{(view.finished_at - view.created_at).total_seconds() * 1000:.0f}" if view.finished_at else "-"
        rows.append((view.model, view.status, ms, text, describe(view)))
    fixed = [max(len(r[i]) for r in rows) for i in range(3)]
    free = max(width - sum(fixed) - 12, 40)
    widths = [*fixed, free * 2 // 5, free - free * 2 // 5]

    def cut(s: str, w: int) -> str:
        return s if len(s) <= w else s[: w - 1] + "…"

    lines = [" | ".join(cut(c, w).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo(timeout: float = 300.0, *, keep: bool = False, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the sample jobs and print their table; with `keep`, then serve the console until a stop signal."""
    with stop_on_signals(), local_stack(models=DEMO_MODELS) as client:
        jobs = client.submit_many(SAMPLES)
        views = client.wait_many([j.id for j in jobs], timeout=timeout)
        click.echo(render_table(views, [str(s["text"]) for s in SAMPLES]))
        failed = [v for v in views if v.status != "succeeded"]
        if failed:
            raise click.ClickException(f"{len(failed)} demo jobs did not succeed")
        if not keep:
            click.echo(f"\nconsole:  stopped with the demo; `textq demo --keep` (make demo DEMO_ARGS=--keep) keeps all "
                       f"this running and serves it at http://{host}:{port}/console/ until Ctrl-C")
            return
        from producer.console.serve import serve_console  # the api extra, only when serving

        serve_console(client, host=host, port=port)
