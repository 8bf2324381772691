"""Matplotlib figures for the Diffusion lab (numbers in, a Figure out; no torch, no gradio).

matplotlib.figure.Figure is used directly, not pyplot: no global figure state shared between
the server's threads."""
from __future__ import annotations

from matplotlib.figure import Figure

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#111111")


def schedule_figure(curves) -> Figure:
    """β_t, ᾱ_t and log SNR_t against t, one line per schedule (pipelines.lab.ScheduleCurve);
    the loaded model's own schedule (the last curve, when present) dashed on top."""
    figure = Figure(figsize=(11, 3.4), dpi=90, layout="constrained")
    axes = figure.subplots(1, 3)
    panels = (("betas", "β_t (noise added per step)"), ("alphas_cumprod", "ᾱ_t (signal² kept)"),
              ("log_snr", "log SNR_t = log ᾱ_t / (1 − ᾱ_t)"))
    for ax, (attribute, title) in zip(axes, panels):
        for index, curve in enumerate(curves):
            own = curve.name.startswith("this model")
            ax.plot(curve.timesteps, getattr(curve, attribute), label=curve.name, color=COLOURS[index % len(COLOURS)],
                    linestyle="--" if own else "-", linewidth=1.2 if own else 1.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
    axes[2].axhline(0, color="grey", linewidth=0.8)  # SNR = 1: as much noise as signal
    axes[2].legend(fontsize=8, loc="lower left")  # the empty corner: log SNR falls from top left
    return figure
