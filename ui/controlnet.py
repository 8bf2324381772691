"""ControlNet tab: steer txt2img or img2img with up to 3 control units (edges, pose, …)."""
from __future__ import annotations

import gradio as gr

from pipelines.requests import RESIZE_MODES, Img2ImgRequest, Txt2ImgRequest

from . import xy_grid
from .common import (GenerationService, SafeImage, open_image, prompt_box, result_panel, sampler_controls,
                     sampling_from, wire_common, with_session)
from .control_units import UNIT_FIELDS, control_from, control_panel


def build(service: GenerationService, native_size: int) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            prompts = prompt_box("controlnet", service.count_tokens)
            sampler = sampler_controls("controlnet", service.limits, native_size)
            panel_units = control_panel("controlnet", sampler.width, sampler.height)
            with gr.Accordion("Start from an image (img2img)", open=False):
                use_init = gr.Checkbox(value=False, label="Use an init image", elem_id="controlnet_use_init")
                init_image = SafeImage(label="Init image", type="filepath", image_mode=None, height=200,
                                       elem_id="controlnet_init")
                resize_mode = gr.Radio(list(RESIZE_MODES), value="crop and resize", label="Resize mode")
                strength = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength", elem_id="controlnet_strength")
            grid = xy_grid.grid_controls("controlnet", xy_grid.CONTROLNET_AXES)  # X/Y grid hook
        with gr.Column(scale=1):
            panel = result_panel("controlnet")

    def generate(prompt, negative, use_init_image, init_path, mode, denoise, scheduler, steps, cfg, cfg_scale, eta, seed,
                 batch_size, batch_count, width, height, *control_and_grid, request: gr.Request, progress=gr.Progress()):
        *control_and_grid, clip_skip = control_and_grid  # clip skip comes last
        control_values, grid_values = xy_grid.split_values(control_and_grid)  # X/Y grid hook

        def build_request():
            control = control_from(list(control_values), width, height)
            if control is None:
                raise gr.Error("Enable at least one ControlNet unit (or use the txt2img tab).")
            common = dict(prompt=prompt, negative_prompt=negative, width=width, height=height, control=control,
                          clip_skip=clip_skip,
                          sampling=sampling_from(scheduler, steps, cfg, cfg_scale, eta, seed, batch_size, batch_count))
            if use_init_image:
                return Img2ImgRequest(init_image=open_image(init_path, "init image"), strength=denoise,
                                      resize_mode=mode, **common)
            return Txt2ImgRequest(**common)

        yield from xy_grid.generate(service, build_request, grid_values, request.session_hash, progress)

    inputs = [prompts.prompt, prompts.negative, use_init, init_image, resize_mode, strength, *sampler.inputs(),
              *panel_units.inputs(), *grid.inputs(), sampler.clip_skip]
    names = ["prompt", "negative_prompt", "use_init_image", "init_image", "resize_mode", "strength", "scheduler", "steps",
             "cfg", "cfg_scale", "eta", "seed", "batch_size", "batch_count", "width", "height"]
    names += [f"unit{u + 1}_{field}" for u in range(len(panel_units.units)) for field in UNIT_FIELDS] + ["guess_mode"]
    names += list(xy_grid.GRID_FIELDS) + ["clip_skip"]
    panel.generate.click(with_session(generate, names), inputs, panel.outputs(), api_name="controlnet", **service.gpu_event)
    wire_common(panel, sampler, service, interrupt_api=None)
