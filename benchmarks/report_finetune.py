"""Tables and plots of the committed fine-tune and MLM-masking results, for BENCHMARKS.md.

Reads ``benchmarks/results/finetune_<task>.json`` (``finetune.py``) and ``benchmarks/results/mlm_masking.json``
(``mlm_masking.py``), prints the Markdown tables and writes

    finetune_curves.png   training loss (top) and the headline validation score per epoch (bottom), modes on one axis
    finetune_time.png     training time per mode and task, with the speed-up against HF group_by_length
    mlm_masking.png       held-out MLM loss per epoch (fixed masks) and training loss, static vs dynamic masking

    python benchmarks/report_finetune.py [--results benchmarks/results] [--no-plots] [--model-cards model_cards]

With ``--model-cards DIR`` it also writes the model cards of the banking77 fine-tunes (static and packed) from their
committed results, as ``finetune.py --output-dir`` writes them next to the saved models.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
TASK_ORDER = ("banking77", "ud_pos", "wnut17", "squad")
MODE_ORDER = ("static", "dynamic", "packed", "hf_grouped")
MODE_LABEL = {
    "static": "DynMask static",
    "dynamic": "DynMask dynamic",
    "packed": "DynMask packed",
    "hf_grouped": "HF `group_by_length`",
}
METRIC_LABEL = {"accuracy": "accuracy", "f1": "F1", "exact_match": "EM", "precision": "precision", "recall": "recall"}
COLORS = {"static": "#7f7f7f", "dynamic": "#1f77b4", "packed": "#2ca02c", "hf_grouped": "#d62728"}
STYLES = {"static": "-", "dynamic": "--", "packed": ":", "hf_grouped": "-"}  # dynamic and packed often coincide


def load(results: Path) -> dict[str, dict[str, Any]]:
    reports = {}
    for task in TASK_ORDER:
        path = results / f"finetune_{task}.json"
        if path.exists():
            report = json.loads(path.read_text())
            if "train_features" not in report.get("data", {}):  # written by an earlier finetune.py: other fields
                print(f"(skipped {path.name}: written by an earlier version of finetune.py)\n")
                continue
            reports[task] = report
    return reports


def _points(report: dict[str, Any], value: float) -> float:
    return value if report["settings"]["task"] == "squad" else 100.0 * value


def _modes(report: dict[str, Any]) -> list[str]:
    return [m for m in MODE_ORDER if m in report["results"]]


def _seconds(r: dict[str, Any], key: str) -> str:
    return f"{r[key]:,.0f} s" if r.get(key) is not None else "—"


def table(report: dict[str, Any]) -> str:
    """One task's Markdown table: scores (mean ± std over the seeds where there are several), training CPU and wall
    time per run, throughput, padding, memory, and speed-ups from CPU time (runs before the interleaved schedule have
    wall time only; their speed-ups are from wall time)."""
    metrics = report["metrics"]
    seeds = report.get("over_seeds")
    head = [METRIC_LABEL.get(m, m) for m in metrics]
    lines = [
        "| mode | "
        + " | ".join(head)
        + " | train CPU | train wall | real tok/s | padding | peak mem | vs static | vs HF grouped |",
        "|---|" + "---:|" * (len(metrics) + 7),
    ]
    for mode in _modes(report):
        r = report["results"][mode]
        if seeds is not None:
            over = seeds["modes"][mode]
            scores = [
                f"{over['scores_points'][m]['mean']:.2f} ± {over['scores_points'][m]['std']:.2f}" for m in metrics
            ]
            runs = len(seeds["seeds"])
            timing = {k: over[k] / runs for k in ("train_cpu_seconds", "train_seconds")}
            timing.update({k: v for k, v in over.items() if k.startswith("speedup_vs_")})
        else:
            scores = [f"{_points(report, r['eval'][m]):.2f}" for m in metrics]
            timing = r
        padding = f"{100 * (1 - r['padding_efficiency']):.1f}%" if "padding_efficiency" in r else "—"
        memory = f"{r['peak_rss_rise_mib']:,.0f} MiB" if r.get("peak_rss_rise_mib") is not None else "—"
        static = f"{timing['speedup_vs_static']:.2f}×" if "speedup_vs_static" in timing else "—"
        grouped = f"{timing['speedup_vs_hf_grouped']:.2f}×" if "speedup_vs_hf_grouped" in timing else "—"
        lines.append(
            f"| {MODE_LABEL[mode]} | "
            + " | ".join(scores)
            + f" | {_seconds(timing, 'train_cpu_seconds')} | {_seconds(timing, 'train_seconds')}"
            f" | {r['real_tokens_per_second']:,.0f} | {padding} | {memory} | {static} | {grouped} |"
        )
    if seeds is not None:
        gaps = ", ".join(
            f"{METRIC_LABEL.get(m, m)} {g['largest_gap_of_means']:.2f} (largest std {g['largest_std']:.2f})"
            for m, g in seeds["gaps_points"].items()
        )
        return (
            "\n".join(lines)
            + f"\n\nLargest gap between the modes' means (points), over seeds {seeds['seeds']}: {gaps}."
        )
    spread = ", ".join(f"{METRIC_LABEL.get(m, m)} {v:.2f}" for m, v in report["score_spread_points"].items())
    return "\n".join(lines) + f"\n\nLargest gap between modes (points): {spread}."


def describe(report: dict[str, Any]) -> str:
    s, d = report["settings"], report["data"]
    features = (
        f" ({d['train_features']:,} / {d['eval_features']:,} windows)"
        if d["train_features"] != d["train_examples"]
        else ""
    )
    stride = f", doc stride {s['doc_stride']}" if s.get("doc_stride") else ""
    return (
        f"{d['train_examples']:,} training / {d['eval_examples']:,} validation examples{features}, mean "
        f"{d['mean_train_tokens']:.0f} tokens; max length {s['max_length']}{stride}, batch {s['batch_size']}, "
        f"{s['epochs']:g} epochs, lr {s['learning_rate']:g} (linear, {s['warmup_ratio']:.0%} warm-up), "
        f"{_seeds(s)}, {s.get('schedule', 'sequential')}; `{report['command']}`"
    )


def mlm_tables(report: dict[str, Any]) -> str:
    runs, downstream = report["runs"], report["downstream"]
    epochs = [e for e, _ in runs["static"]["heldout_loss_per_epoch"]]
    lines = [
        "| masking | " + " | ".join(f"epoch {e:g}" for e in epochs) + " | train time |",
        "|---|" + "---:|" * (len(epochs) + 1),
    ]
    for masking, run in runs.items():
        losses = " | ".join(f"{loss:.4f}" for _, loss in run["heldout_loss_per_epoch"])
        lines.append(f"| {masking} | {losses} | {run['train_seconds']:,.0f} s |")
    task = report["settings"]["downstream"]
    metrics = [m for m in ("accuracy", "f1") if m in next(iter(downstream.values()))["eval"]]
    header = " | ".join(f"{task} {METRIC_LABEL.get(m, m)}" for m in metrics)
    lines += ["", f"| MiniLM continued with | {header} |", "|---|" + "---:|" * len(metrics)]
    for masking, result in downstream.items():
        lines.append(f"| {masking} masking | " + " | ".join(f"{100 * result['eval'][m]:.2f}" for m in metrics) + " |")
    return "\n".join(lines)


def _seeds(settings: dict[str, Any]) -> str:
    seeds = settings.get("seeds", [settings.get("seed")])
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def plot_curves(reports: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(reports), figsize=(4.2 * len(reports), 6.4), squeeze=False)
    for column, (task, report) in enumerate(reports.items()):
        metric = report["metrics"][0]
        top, bottom = axes[0][column], axes[1][column]
        for mode in _modes(report):
            r = report["results"][mode]
            epochs, losses = zip(*r["loss_curve"], strict=True)
            style = {"color": COLORS[mode], "linestyle": STYLES[mode], "lw": 1.4}
            top.plot(epochs, losses, label=MODE_LABEL[mode].replace("`", ""), **style)
            points = [(e["epoch"], _points(report, e[metric])) for e in r["eval_per_epoch"]]
            bottom.plot(*zip(*points, strict=True), marker="o", ms=4, **style)
        top.set_title(task)
        top.set_yscale("log")
        top.set_xlabel("epoch")
        bottom.set_xlabel("epoch")
        if column == 0:
            top.set_ylabel("training loss")
        bottom.set_ylabel(f"validation {METRIC_LABEL.get(metric, metric)}")
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("MiniLM fine-tunes: every mode on one axis (1 thread, pinned core)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_time(reports: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.2
    for column, report in enumerate(reports.values()):
        for k, mode in enumerate(MODE_ORDER):
            if mode not in report["results"]:
                continue
            r = report["results"][mode]
            minutes = r.get("train_cpu_seconds", r["train_seconds"]) / 60
            x = column + (k - 1.5) * width
            ax.bar(
                x, minutes, width, color=COLORS[mode], label=MODE_LABEL[mode].replace("`", "") if column == 0 else None
            )
            note = f"{r['speedup_vs_hf_grouped']:.2f}×" if "speedup_vs_hf_grouped" in r else ""
            ax.annotate(
                note,
                (x, minutes),
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90,
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.set_xticks(range(len(reports)), list(reports))
    ax.set_ylabel("training CPU time, seed 0 (minutes)")
    ax.set_title("Training time per mode (labels: speed-up against HF group_by_length)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_mlm(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"static": "#ff7f0e", "dynamic": "#1f77b4"}
    for masking, run in report["runs"].items():
        epochs, losses = zip(*run["heldout_loss_per_epoch"], strict=True)
        left.plot(epochs[1:], losses[1:], marker="o", label=f"{masking} masking", color=colors[masking])
        epochs, losses = zip(*run["loss_curve"], strict=True)
        right.plot(epochs, losses, label=f"{masking} masking", color=colors[masking], lw=1.2)
    left.set_title("held-out MLM loss, fixed masks")
    right.set_title("training MLM loss")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_cards(report: dict[str, Any], directory: Path, modes: tuple[str, ...] = ("static", "packed")) -> None:
    import sys

    from hf_dynmask.sharing.model_card import make_model_card

    sys.path.insert(0, str(Path(__file__).parent))
    import finetune

    task = report["settings"]["task"]
    for mode in modes:
        if mode not in report["results"]:
            print(f"(no {mode} run in the {task} results: its model card is left as it is)")
            continue
        summary = finetune.card_summary(task, report["results"][mode])
        make_model_card(summary).save(directory / f"{summary.model_name}.md")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--model-cards", type=Path, default=None, help="write the banking77 cards into this folder")
    args = parser.parse_args(argv)
    reports = load(args.results)
    for task, report in reports.items():
        print(f"**{task}**: {describe(report)}\n\n{table(report)}\n")
    mlm_path = args.results / "mlm_masking.json"
    mlm = json.loads(mlm_path.read_text()) if mlm_path.exists() else None
    if mlm is not None:
        print(mlm_tables(mlm))
    if not args.no_plots:
        if reports:
            plot_curves(reports, args.results / "finetune_curves.png")
            plot_time(reports, args.results / "finetune_time.png")
        if mlm is not None:
            plot_mlm(mlm, args.results / "mlm_masking.png")
    if args.model_cards is not None and "banking77" in reports:
        write_cards(reports["banking77"], args.model_cards)


if __name__ == "__main__":
    main()
