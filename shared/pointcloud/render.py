"""Pictures of point clouds: PNG files drawn with matplotlib (Agg, no display needed).

    render_points(points, "out.png", labels=parts, keypoints=kps, segments=edges)

Points are coloured by integer ``labels`` (discrete palette, optional legend names) or by float
``scores`` (colour map with a colour bar), or a single colour. ``keypoints (K, 3)`` are drawn as
large numbered dots, ``segments (M, 2, 3)`` as lines (skeletons, box edges; see
:func:`box_edges`). Coordinates are y-up (ShapeNet / ScanNet after alignment): the picture shows
y vertical, a proper rotation of the data (never a mirror image). open3d's offscreen renderer
needs EGL/OSMesa, which many servers lack, so matplotlib is used everywhere.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _np(x):
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _to_plot(p: np.ndarray) -> np.ndarray:
    """(x, y, z) y-up -> matplotlib's z-up frame (x, -z, y): a rotation, not a reflection."""
    return np.stack([p[..., 0], -p[..., 2], p[..., 1]], -1)


def box_edges(centre, half_extents, yaw: float = 0.0) -> np.ndarray:
    """The 12 edges ``(12, 2, 3)`` of a box rotated by ``yaw`` about y (right-handed, as
    :func:`shared.pointcloud.points.yaw_rotation`), for the ``segments`` argument."""
    c, h = np.asarray(centre, float), np.asarray(half_extents, float)
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    cos, sin = np.cos(yaw), np.sin(yaw)
    R = np.array([[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]])
    corners = (signs * h) @ R.T + c                                          # (8, 3)
    pairs = [(i, j) for i in range(8) for j in range(i + 1, 8)
             if np.abs(signs[i] - signs[j]).sum() == 2]                      # differ in one axis
    return np.stack([[corners[i], corners[j]] for i, j in pairs])


def _palette(n: int):
    from matplotlib import colormaps
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(max(n, 1))]


def _draw(ax, points, labels=None, scores=None, label_names=None, keypoints=None,
          keypoint_names=None, segments=None, segment_colors=None, title=None, view=(20, -60),
          point_size=None, cmap="viridis", color="tab:blue", show_axes=False, fig=None):
    from matplotlib.lines import Line2D
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    pts = _np(points).reshape(-1, 3).astype(np.float64)
    P = _to_plot(pts)
    n = len(P)
    size = point_size if point_size is not None else float(np.clip(4000.0 / max(n, 1), 0.3, 8.0))
    if labels is not None:
        labels = _np(labels).reshape(-1).astype(np.int64)
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} entries for {n} points")
        uniq = np.unique(labels)
        pal = _palette(int(max(uniq.max() + 1, len(label_names or ()))))
        bg = labels < 0                                  # unlabelled (e.g. floor, walls): light grey
        if bg.any():
            ax.scatter(P[bg, 0], P[bg, 1], P[bg, 2], c=[(0.72, 0.72, 0.72, 1.0)], s=size * 0.5,
                       depthshade=False, linewidths=0)
        cols = np.array([pal[l] for l in labels[~bg]]).reshape(-1, 4)
        ax.scatter(P[~bg, 0], P[~bg, 1], P[~bg, 2], c=cols, s=size * (2.0 if bg.any() else 1.0),
                   depthshade=False, linewidths=0)
        if label_names is not None:
            handles = [Line2D([], [], marker="o", ls="", color=pal[l], label=label_names[l])
                       for l in uniq if 0 <= l < len(label_names)]
            ax.legend(handles=handles, loc="upper left", fontsize=7, frameon=False)
    elif scores is not None:
        scores = _np(scores).reshape(-1).astype(np.float64)
        if len(scores) != n:
            raise ValueError(f"scores has {len(scores)} entries for {n} points")
        sc = ax.scatter(P[:, 0], P[:, 1], P[:, 2], c=scores, cmap=cmap, s=size, depthshade=False,
                        linewidths=0)
        if fig is not None:
            fig.colorbar(sc, ax=ax, shrink=0.6, pad=0.02)
    else:
        ax.scatter(P[:, 0], P[:, 1], P[:, 2], c=color, s=size, depthshade=False, linewidths=0)
    extent = [P]
    if segments is not None:
        S = _to_plot(_np(segments).reshape(-1, 2, 3).astype(np.float64))
        ax.add_collection3d(Line3DCollection(S, colors=segment_colors or "k", linewidths=1.2))
        extent.append(S.reshape(-1, 3))
    if keypoints is not None:
        K = _to_plot(_np(keypoints).reshape(-1, 3).astype(np.float64))
        pal = _palette(len(K))
        ax.scatter(K[:, 0], K[:, 1], K[:, 2], c=[pal[i] for i in range(len(K))], s=60,
                   edgecolors="k", linewidths=0.8, depthshade=False, zorder=10)
        for i, k in enumerate(K):
            name = keypoint_names[i] if keypoint_names is not None else str(i)
            ax.text(k[0], k[1], k[2], f" {name}", fontsize=6, zorder=11)
        extent.append(K)
    allp = np.concatenate(extent)
    lo, hi = allp.min(0), allp.max(0)
    mid, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, 1e-6)
    ax.set_xlim(mid[0] - half[0], mid[0] + half[0])
    ax.set_ylim(mid[1] - half[1], mid[1] + half[1])
    ax.set_zlim(mid[2] - half[2], mid[2] + half[2])
    ax.set_box_aspect(tuple(half))
    ax.view_init(elev=view[0], azim=view[1])
    if not show_axes:
        ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def _figure(size, dpi):
    from matplotlib.figure import Figure
    import mpl_toolkits.mplot3d  # noqa: F401  (registers the 3d projection)
    w, h = size
    return Figure(figsize=(w / dpi, h / dpi), dpi=dpi)


def render_points(points, path, labels=None, scores=None, label_names=None, keypoints=None,
                  keypoint_names=None, segments=None, segment_colors=None, title=None,
                  size=(800, 600), dpi=100, view=(20, -60), point_size=None, cmap="viridis",
                  show_axes=False) -> Path:
    """Render ``points (N, 3)`` (numpy or torch) to a PNG of ``size = (width, height)`` pixels.

    Args:
        labels: ``(N,)`` ints, one palette colour each; negative labels (background) are drawn
            smaller in light grey. ``label_names`` adds a legend.
        scores: ``(N,)`` floats, coloured with ``cmap`` and a colour bar (ignored if ``labels``).
        keypoints: ``(K, 3)`` drawn as large dots, labelled by ``keypoint_names`` or their index.
        segments: ``(M, 2, 3)`` line segments; ``segment_colors`` one colour or one per segment.
        view: ``(elevation, azimuth)`` in degrees; the default looks at the front-left (+z, +x).
    Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure(size, dpi)
    ax = fig.add_subplot(projection="3d")
    _draw(ax, points, labels, scores, label_names, keypoints, keypoint_names, segments,
          segment_colors, title, view, point_size, cmap, show_axes=show_axes, fig=fig)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.95)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def render_grid(items: list[dict], path, cols: int | None = None, cell=(360, 320), dpi=100) -> Path:
    """Several clouds in one PNG: ``items`` are keyword dicts of :func:`render_points`
    (``points`` required; ``labels``, ``scores``, ``keypoints``, ``segments``, ``title``, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not items:
        raise ValueError("render_grid needs at least one item")
    cols = cols or min(4, len(items))
    rows = -(-len(items) // cols)
    fig = _figure((cell[0] * cols, cell[1] * rows), dpi)
    for i, item in enumerate(items):
        ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
        _draw(ax, **item)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.95, wspace=0, hspace=0.05)
    fig.savefig(path, dpi=dpi, format="png")
    return path
