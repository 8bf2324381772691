"""Diffusion lab tab: the seed's processes made visible on the loaded model — the forward
process, the training schedules, a denoising trajectory (DDIM η = 0 vs 1) and the anatomy of
classifier-free guidance. Each action builds a lab request (pipelines/core/lab_requests.py) and runs
it like a generation: service.run → backend.stream with this session's Job (interruptible,
on whichever backend serves: a manager, a pool, Ray); pipelines/lab.py is the torch side.
Every action is a named API endpoint."""
from __future__ import annotations

import math

import gradio as gr
import numpy as np
from PIL import Image

from pipelines.core.errors import StudioError
from pipelines.core.grid import AXES, parse_values
from pipelines.core.lab_requests import MAX_SCALES, LabCfgRequest, LabForwardRequest, LabSchedulesRequest, LabTrajectoryRequest

from .common import GenerationService, SafeImage, open_image
from .fields import widget
from .lab_plots import schedule_figure

LAB_STEPS = dict(minimum=2, maximum=100)  # the lab runs its own short loops
LAB_SEED = dict(value=1, info=None)  # the lab's seeds are fixed: no −1 = random
DISPLAY_SIZE = 256  # small models' images are enlarged to this (nearest: the noise stays pixel-sharp)


def _request(build):
    """A lab request from the widgets' values, or the message saying what is wrong."""
    try:
        return build()
    except StudioError as error:
        raise gr.Error(str(error)) from error


def enlarge(image, size: int = DISPLAY_SIZE):
    factor = size // max(image.size)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


def forward_text(view) -> str:
    snr = "∞" if math.isinf(view.snr) else f"{view.snr:.4g} (log SNR {math.log(view.snr):+.2f})"
    return (f"**t = {view.t} of {view.T}** — ᾱ_t = {view.alpha_bar:.4f}  \n"
            f"x_t = **{view.signal:.3f}** · x_0 + **{view.noise:.3f}** · ε  (signal √ᾱ_t, noise √(1−ᾱ_t))  \n"
            f"SNR = ᾱ_t/(1−ᾱ_t) = {snr}")


def schedules_text(curves) -> str:
    rows = ["| schedule | ᾱ at t = T/2 | ᾱ_T | log SNR_T |", "|---|---|---|---|"]
    for c in curves:
        half = len(c.alphas_cumprod) // 2
        rows.append(f"| {c.name} | {c.alphas_cumprod[half - 1]:.4f} | {c.alphas_cumprod[-1]:.5f} | {c.log_snr[-1]:+.2f} |")
    return "\n".join(rows)


def _forward_panel(service: GenerationService) -> None:
    gr.Markdown("**Forward process** q(x_t | x_0): x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε. The latent x_t is decoded by "
                "the VAE; the pixel x_t is the same formula on the pixels. Latents lose their picture sooner: "
                "each latent value carries a whole 8×8 patch.")
    with gr.Row():
        with gr.Column(scale=1):
            image = SafeImage(label="Image (empty: a demo picture)", type="filepath", image_mode=None,
                              sources=["upload", "clipboard"], height=220, elem_id="lab_image")
            t = gr.Slider(0, service.backend.train_steps, value=service.backend.train_steps // 2, step=1, label="t",
                          info="0 = the image, T = (almost) pure noise", elem_id="lab_t")
            seed = gr.Number(value=0, precision=0, label="Noise seed", elem_id="lab_forward_seed")
            run = gr.Button("Noise it", variant="primary", elem_id="lab_forward_run")
        with gr.Column(scale=2, elem_id="lab_forward_outputs"):
            with gr.Row():
                latent = gr.Image(label="x_t in latent space, decoded", format="png", interactive=False, height=256,
                                  elem_id="lab_forward_latent")
                pixel = gr.Image(label="x_t in pixel space", format="png", interactive=False, height=256,
                                 elem_id="lab_forward_pixel")
            weights = gr.Markdown(elem_id="lab_forward_weights")

    def forward(image_path, t_value, seed_value, request: gr.Request, progress=gr.Progress()):
        lab_request = _request(lambda: LabForwardRequest(open_image(image_path, "image"), t_value, seed_value or 0))
        view = service.run(lab_request, request.session_hash, progress)
        return enlarge(view.latent_decoded), enlarge(view.pixel), forward_text(view)

    inputs, outputs = [image, t, seed], [latent, pixel, weights]
    run.click(forward, inputs, outputs, api_name="lab_forward", **service.gpu_event)
    t.release(forward, inputs, outputs, api_visibility="private", **service.gpu_event)


def _schedules_panel(service: GenerationService) -> None:
    gr.Markdown("**Training schedules.** DDPM's linear β (made for pixels) drives ᾱ to ~0 long before T: the "
                "last few hundred steps see pure noise. SD's scaled-linear β (linear in √β, smaller β_T) keeps "
                "more signal through the middle and ends at log SNR ≈ −5, which suits a latent space of unit "
                "variance whose every value is a whole patch. The dashed line is the loaded model's own schedule.")
    plot_button = gr.Button("Plot the schedules", elem_id="lab_schedules_run")
    plot = gr.Plot(label="β_t, ᾱ_t, log SNR_t", format="png", elem_id="lab_schedules_plot")
    table = gr.Markdown(elem_id="lab_schedules_table")

    def schedules():
        # From the model's config alone: no device, no job (it may run beside this session's generation).
        try:
            curves = service.backend.run(LabSchedulesRequest())
        except StudioError as error:
            raise gr.Error(str(error)) from error
        return schedule_figure(curves), schedules_text(curves)

    plot_button.click(schedules, None, [plot, table], api_name="lab_schedules")


def _prompt_row(tab: str):
    prompt = widget("prompt", f"{tab}_prompt", value="a red circle on a white background")
    negative = widget("negative_prompt", f"{tab}_negative", value="")
    return prompt, negative


def _trajectory_panel(service: GenerationService) -> None:
    gr.Markdown("**Denoising trajectory** (DDIM). Every k steps: the sample x_t and the step's prediction x̂_0 = "
                "(x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t. Both runs start from the same x_T: η = 0 adds no noise (deterministic), "
                "η = 1 adds DDPM's posterior σ at every step.")
    prompt, negative = _prompt_row("lab_trajectory")
    with gr.Row():
        steps = widget("steps", "lab_trajectory_steps", **LAB_STEPS)
        every = gr.Slider(1, 50, value=5, step=1, label="Show every k steps", elem_id="lab_trajectory_every")
        scale = widget("cfg_scale", "lab_trajectory_cfg")
        seed = widget("seed", "lab_trajectory_seed", **LAB_SEED)
    run = gr.Button("Run", variant="primary", elem_id="lab_trajectory_run")
    strip = gr.Image(label="x_t and x̂_0 every k steps; η = 0 above, η = 1 below", format="png", interactive=False,
                     elem_id="lab_trajectory_strip")
    notes = gr.Markdown(elem_id="lab_trajectory_notes")

    def trajectory(prompt_text, negative_text, steps_value, every_value, scale_value, seed_value,
                   request: gr.Request, progress=gr.Progress()):
        lab_request = _request(lambda: LabTrajectoryRequest(prompt_text or "", negative_text or "", steps_value,
                                                            every_value, scale_value, seed_value or 0))
        result = service.run(lab_request, request.session_hash, progress)
        last = [np.asarray(frames[-1].x_t, dtype=np.int16) for frames in result.runs.values()]
        gap = float(np.abs(last[0] - last[1]).mean()) if len(last) == 2 else 0.0
        return result.strip, (f"{len(next(iter(result.runs.values())))} frames per run. The finished images of "
                              f"η = 0 and η = 1 differ by {gap:.1f} grey levels per pixel on average.")

    run.click(trajectory, [prompt, negative, steps, every, scale, seed], [strip, notes], api_name="lab_trajectory",
              **service.gpu_event)


def _cfg_panel(service: GenerationService) -> None:
    gr.Markdown("**CFG anatomy.** At one step the UNet predicts the noise twice, without and with the prompt; "
                "guidance extrapolates ε = ε_uncond + s·(ε_cond − ε_uncond). Each ε is shown as the x̂_0 it implies. "
                "Below, the finished image at several scales from the same noise: large s over-saturates.")
    prompt, negative = _prompt_row("lab_cfg")
    with gr.Row():
        steps = widget("steps", "lab_cfg_steps", **LAB_STEPS)
        step = gr.Slider(1, 100, value=5, step=1, label="Inspect step", elem_id="lab_cfg_step")
        scale = widget("cfg_scale", "lab_cfg_scale", label="CFG scale s")
        seed = widget("seed", "lab_cfg_seed", **LAB_SEED)
    scales = gr.Textbox(value="1, 3, 7, 12, 20", label="Scales for the finished images", elem_id="lab_cfg_scales")
    run = gr.Button("Run", variant="primary", elem_id="lab_cfg_run")
    predictions = gr.Image(label="uncond, cond and guided ε at the step, as x̂_0", format="png", interactive=False,
                           elem_id="lab_cfg_predictions")
    finals = gr.Image(label="finished images per scale", format="png", interactive=False, elem_id="lab_cfg_finals")
    notes = gr.Markdown(elem_id="lab_cfg_notes")

    def anatomy(request: gr.Request, progress=gr.Progress(), **values):
        lab_request = _request(lambda: LabCfgRequest(
            values["prompt"] or "", values["negative"] or "", values["steps"], values["step"], values["scale"],
            values["seed"] or 0, tuple(parse_values(AXES["CFG scale"], values["scales"] or "", MAX_SCALES))))
        result = service.run(lab_request, request.session_hash, progress)
        return result.predictions_strip, result.finals_strip, (
            f"Step {lab_request.step}/{lab_request.steps} (t = {result.timestep}): ‖ε_cond − ε_uncond‖ / ‖ε_uncond‖ = "
            f"{result.guidance_ratio:.3f} — guidance multiplies this difference by s = {lab_request.scale:g}.")

    inputs = {"prompt": prompt, "negative": negative, "steps": steps, "step": step, "scale": scale, "scales": scales,
              "seed": seed}  # LabCfgRequest's names; the API's positional order as before
    run.click(anatomy, inputs_kwargs=inputs, outputs=[predictions, finals, notes], api_name="lab_cfg", **service.gpu_event)


def build(service: GenerationService) -> None:
    with gr.Tabs(elem_id="lab_tabs"):
        with gr.Tab("Forward process", id="lab_forward"):
            _forward_panel(service)
        with gr.Tab("Schedules", id="lab_schedules"):
            _schedules_panel(service)
        with gr.Tab("Trajectory", id="lab_trajectory"):
            _trajectory_panel(service)
        with gr.Tab("CFG anatomy", id="lab_cfg"):
            _cfg_panel(service)
