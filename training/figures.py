"""Pictures of a run, logged to MLflow beside its numbers: the training curves (loss, learning rate,
tokens/s per step) and the evaluation's comparison of candidate and baseline (per-metric bars, per-item
scatter, the gate's paired effect with its confidence interval). Drawn with matplotlib's Agg backend
(no display); each function returns a Figure the caller logs and closes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

CANDIDATE, BASELINE = "#1f77b4", "#ff7f0e"
METRICS = ("accuracy", "exact_match", "token_f1", "rouge_l")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def close(fig: Any) -> None:
    """Release a figure from pyplot's registry (a long-lived process draws many)."""
    _pyplot().close(fig)


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The trainer's ``metrics.jsonl`` (one object per logged step); a torn last line is skipped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict) and "step" in r]


def training_curves(rows: list[dict[str, float]], title: str = "") -> Any:
    """Loss, learning rate and tokens/s against the optimizer step."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    steps = [r["step"] for r in rows]
    for ax, key, label in zip(axes, ("loss", "lr", "tokens_per_sec"), ("loss", "learning rate", "tokens / s"),
                              strict=True):  # fmt: skip
        values = [r.get(key, float("nan")) for r in rows]
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, color=CANDIDATE)
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    if (
        rows
        and all(r.get("loss", 0) > 0 for r in rows)
        and max(r["loss"] for r in rows) > 20 * min(r["loss"] for r in rows)
    ):
        axes[0].set_yscale("log")
    fig.suptitle(title or "training", fontsize=11)
    return fig


def evaluation_comparison(result: dict[str, Any]) -> Any:
    """Candidate vs baseline from an evaluation report (``training/evaluate.py``): per-metric bars,
    per-item scatter of the two scores, and the paired effect on the gate's metric with its CI."""
    plt = _pyplot()
    base, cand = result["baseline"], result["candidate"]
    base_label = base["kind"] + (f" v{base['version']}" if base.get("version") else "")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)

    keys = [k for k in METRICS if k in cand["metrics"] and k in base["metrics"]]
    x = np.arange(len(keys))
    axes[0].bar(x - 0.2, [base["metrics"][k] for k in keys], 0.4, label=base_label, color=BASELINE)
    axes[0].bar(x + 0.2, [cand["metrics"][k] for k in keys], 0.4, label="candidate", color=CANDIDATE)
    axes[0].set_xticks(x, [k.replace("_", " ") for k in keys])
    axes[0].set_ylim(0, 1.05)
    ppl = (base["metrics"].get("perplexity"), cand["metrics"].get("perplexity"))
    title = "metrics" + (f" (perplexity {ppl[0]:.2f} -> {ppl[1]:.2f})" if None not in ppl else "")
    axes[0].set_title(title)
    axes[0].legend(loc="upper left", fontsize=8)

    b, c = np.asarray(result["scores"]["baseline"], float), np.asarray(result["scores"]["candidate"], float)
    spread = 0.03 if result.get("binary") else 0.0  # binary scores would sit on four points
    jitter = np.random.default_rng(0).uniform(-spread, spread, size=(2, len(b)))
    axes[1].scatter(b + jitter[0], c + jitter[1], s=12, alpha=0.6, color=CANDIDATE)
    axes[1].plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--")
    axes[1].set_xlabel(f"{base_label} score")
    axes[1].set_ylabel("candidate score")
    better, worse = int((c > b).sum()), int((c < b).sum())
    axes[1].set_title(f"per item ({len(b)}): {better} better, {worse} worse")
    axes[1].set_xlim(-0.08, 1.08)
    axes[1].set_ylim(-0.08, 1.08)

    gate = result.get("preview") or {}
    if gate:
        effect, lo, hi = gate["effect"], gate["ci_low"], gate["ci_high"]
        colour = "#2ca02c" if gate.get("promote") else "#d62728"
        axes[2].errorbar([effect], [0], xerr=[[effect - lo], [hi - effect]], fmt="o", color=colour, capsize=8)
        axes[2].axvline(
            gate.get("margin", 0.0), color="grey", linestyle="--", label=f"margin {gate.get('margin', 0):+g}"
        )
        axes[2].axvline(0, color="black", linewidth=0.8)
        axes[2].set_yticks([])
        axes[2].set_ylim(-1, 1)
        axes[2].annotate(f"{effect:+.3f} [{lo:+.3f}, {hi:+.3f}], p={gate['p_value']:.3g}", (effect, 0),
                         textcoords="offset points", xytext=(0, 14), ha="center", fontsize=9)  # fmt: skip
        span = max(abs(lo), abs(hi), abs(gate.get("margin", 0.0)), 0.05) * 1.3
        axes[2].set_xlim(-span, span)
        axes[2].set_xlabel(f"{gate['metric']}: candidate - {base_label}")
        verdict = "passes" if gate.get("promote") else "does not pass"
        axes[2].set_title(f"gate ({gate['test']}): {gate['confidence']:.0%} CI, {verdict}", fontsize=10)
        axes[2].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"evaluation on {result['dataset_id']}: candidate vs {base_label}", fontsize=11)
    return fig
