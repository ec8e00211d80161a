"""The PNG of a run's curves: training loss per logged step and validation BLEU per epoch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def plot_curves(state: Any, path: str | os.PathLike[str]) -> Path:
    """Write loss and BLEU curves of a :class:`TrainerState` to `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_bleu) = plt.subplots(1, 2, figsize=(10, 4))
    if state.loss_history:
        steps, losses = zip(*state.loss_history)
        ax_loss.plot(steps, losses)
    ax_loss.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    epochs = [e["epoch"] for e in state.eval_history]
    for key, label in (("bleu4", "corpus BLEU-4"), ("sentence_bleu4", "mean sentence BLEU-4"), ("bleu1", "corpus BLEU-1")):
        values = [e.get(key) for e in state.eval_history]
        if epochs and all(v is not None for v in values):
            ax_bleu.plot(epochs, values, marker="o", label=label)
    ax_bleu.set(title="validation BLEU", xlabel="epoch", ylabel="score", ylim=(0, 1))
    if epochs:
        ax_bleu.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_scores(scores: Any, path: str | os.PathLike[str], metrics: tuple[str, ...]) -> Path:
    """Per-image score distributions (one histogram per metric) and per-modality mean bars (PNG).

    `scores` is the ``scores.csv`` table (a pandas DataFrame with a ``modality`` column).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(metrics), figsize=(3.2 * len(metrics), 6.4), squeeze=False)
    means = scores.groupby("modality")[list(metrics)].mean()
    counts = scores["modality"].value_counts()
    for i, name in enumerate(metrics):
        axes[0][i].hist(scores[name], bins=20)
        axes[0][i].set(title=name, xlabel="score per image", ylabel="images")
        axes[1][i].bar([f"{m}\n(n={counts[m]})" for m in means.index], means[name])
        axes[1][i].set(title=f"{name} by modality", ylabel="mean")
        axes[1][i].tick_params(axis="x", labelsize=7, rotation=45)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
