"""Draw the VeloxSeg icon: a grey body outline (CT) with a PET hot spot and its green lesion outline.

Writes the 128 x 128 PNG to Resources/Icons/VeloxSeg.png (extension icon, Extensions Index) and
VeloxSegSlicer/Resources/Icons/VeloxSegSlicer.png (module icon). numpy + matplotlib only.

    python scripts/make_icons.py
"""

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZE = 128
TARGETS = (REPO / "Resources" / "Icons" / "VeloxSeg.png",
           REPO / "VeloxSegSlicer" / "Resources" / "Icons" / "VeloxSegSlicer.png")


def draw():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, Ellipse, FancyBboxPatch

    fig = plt.figure(figsize=(1, 1), dpi=SIZE)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    fig.patch.set_alpha(0.0)

    # rounded dark tile, like a slice view
    ax.add_patch(FancyBboxPatch((0.03, 0.03), 0.94, 0.94, boxstyle="round,pad=0,rounding_size=0.14",
                                facecolor="#14181f", edgecolor="none"))
    # axial CT "body": soft-tissue ellipse with a brighter rim and a spine
    ax.add_patch(Ellipse((0.5, 0.47), 0.80, 0.58, facecolor="#6d6d6d", edgecolor="#b9b9b9", linewidth=2.2))
    ax.add_patch(Ellipse((0.5, 0.25), 0.14, 0.10, facecolor="#e6e6e6", edgecolor="none"))
    ax.add_patch(Ellipse((0.30, 0.50), 0.20, 0.28, facecolor="#3b3b3b", edgecolor="none"))
    ax.add_patch(Ellipse((0.70, 0.50), 0.20, 0.28, facecolor="#3b3b3b", edgecolor="none"))

    # PET hot spot: radial falloff in a heat colour map
    grid = np.linspace(-1, 1, 200)
    xx, yy = np.meshgrid(grid, grid)
    heat = np.exp(-(xx**2 + yy**2) / 0.18)
    rgba = plt.get_cmap("hot")(heat)
    rgba[..., 3] = np.clip(heat * 1.4, 0, 1)
    ax.imshow(rgba, extent=(0.43, 0.81, 0.37, 0.75), origin="lower", interpolation="bilinear", zorder=3)
    # the segmented lesion outline
    ax.add_patch(Circle((0.62, 0.56), 0.11, facecolor="none", edgecolor="#22ff66", linewidth=3.0, zorder=4))
    return fig


def main():
    fig = draw()
    for target in TARGETS:
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=SIZE, transparent=True)
        print(target)


if __name__ == "__main__":
    main()
