"""PNG plots of a run's curves (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path



def pyplot():
    """matplotlib.pyplot with the file-only Agg backend (imported on first use: it is slow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_metrics(rows: list[dict], out, keys=None, title: str | None = None) -> Path:
    """One panel per metric of ``rows`` (every numeric key but step/time, or ``keys``), against
    step. Rows lacking a key (e.g. validation every N steps) are skipped for that panel.
    """
    plt = pyplot()
    if not rows:
        raise ValueError(f"no metrics to plot into {out}")
    if keys is None:
        keys = []
        for row in rows:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and k not in keys:
                    keys.append(k)
    if not keys:
        raise ValueError(f"the metrics for {out} have no numeric value besides step and time")
    cols = min(3, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="." if len(pts) < 40 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)


def save_figure(fig, path, dpi: int = 100) -> Path:
    """Lay out ``fig``, write it to ``path`` (folders made as needed) and close it."""
    plt = pyplot()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
