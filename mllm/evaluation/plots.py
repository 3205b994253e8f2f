"""Learning curves (accuracy vs number of shots, one line per model): a CSV for ``dvc plots`` and PNG files
for people and MLflow."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mllm.core.atomic import atomic_path
from mllm.evaluation.suite import MODEL_NAMES


def _models(columns) -> list[str]:
    return [m for m in MODEL_NAMES if m in columns] + sorted(c for c in columns if c not in MODEL_NAMES)


def curve_table(rows: list[dict]) -> pd.DataFrame:
    """Mean accuracy over tables and seeds: one row per shot count, one column per model."""
    df = pd.DataFrame(rows).groupby(["shots", "model"]).accuracy.mean().unstack("model")
    return df[_models(df.columns)].reset_index()


def write_curve_csv(rows: list[dict], path: str | Path) -> None:
    with atomic_path(path) as tmp:
        curve_table(rows).round(6).to_csv(tmp, index=False)


def write_pngs(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """``learning_curve.png`` (mean over tables) and ``learning_curve_by_table.png`` (one panel each)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    written = []

    def draw(ax, part: pd.DataFrame, title: str) -> None:
        curve = part.groupby(["shots", "model"]).accuracy.mean().unstack("model")
        for m in _models(curve.columns):
            style = {"linewidth": 2.5} if m in ("trained", "champion") else {"linewidth": 1.2, "alpha": 0.8}
            ax.plot(curve.index, curve[m], marker="o", label=m, **style)
        ax.set_xscale("log", base=2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("shots")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    draw(ax, df, f"mean accuracy over {df.dataset.nunique()} tables")
    ax.legend(fontsize=8, loc="best")
    written.append(_save(fig, out_dir / "learning_curve.png"))
    tables = sorted(df.dataset.unique())
    cols = min(4, len(tables))
    rows_n = -(-len(tables) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.2 * rows_n), squeeze=False)
    for ax, name in zip(axes.ravel(), tables):
        draw(ax, df[df.dataset == name], name)
    for ax in axes.ravel()[len(tables):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "learning_curve_by_table.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path
