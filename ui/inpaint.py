"""Inpaint tab: paint a mask on an image and regenerate what is under it, with RePaint
(any model) or a 9-channel inpainting model; only-masked crops; outpainting; ControlNet."""
from __future__ import annotations

import gradio as gr
import numpy as np
from PIL import Image, ImageFilter

from pipelines import catalog
from pipelines.errors import StudioError
from pipelines.masks import outpaint_canvas
from pipelines.requests import INPAINT_AREAS, INPAINT_MODES, MASKED_CONTENT, RESIZE_MODES, InpaintRequest

from . import xy_grid
from .common import (GenerationService, SafeImage, open_image, prompt_box, result_panel, sampler_controls,
                     sampling_from, wire_common, with_session)
from .control_units import UNIT_FIELDS, control_from, control_panel

# Translucent, so the image stays visible under the paint; only the alpha (coverage) is used.
MASK_BRUSH = gr.Brush(default_size="auto", colors=[("#ff00ff", 0.55)], default_color=("#ff00ff", 0.55), color_mode="fixed")


def painted_mask(editor: dict | None) -> Image.Image | None:
    """The union of the painted layers' alpha (what the brush covered) as an L mask."""
    if not editor or not editor.get("layers"):
        return None
    alpha = None
    for layer in editor["layers"]:
        if layer is None:
            continue
        a = np.asarray(layer.convert("RGBA"))[..., 3] > 0
        alpha = a if alpha is None else alpha | a
    if alpha is None or not alpha.any():
        return None
    return Image.fromarray(alpha.astype(np.uint8) * 255, "L")


def mask_outline(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The image with the mask's border drawn in magenta, for checking where the seam is."""
    mask = mask.convert("L").resize(image.size, Image.NEAREST)
    edge = np.asarray(mask.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(3))) > 0
    array = np.asarray(image.convert("RGB")).copy()
    array[edge] = (255, 0, 255)
    return Image.fromarray(array)


def outline_view(show, editor_value, mask_path, invert_mask, result):
    """The result with the mask's outline, or hidden. result is what the live-preview image
    holds: a numpy array (Gradio's default image type), or a PIL image."""
    if not show or result is None:
        return gr.update(visible=False)
    if isinstance(result, np.ndarray):
        result = Image.fromarray(result.astype(np.uint8))
    mask = open_image(mask_path, "mask") if mask_path else painted_mask(editor_value)
    if mask is None:
        return gr.update(visible=False)
    if invert_mask:
        mask = Image.fromarray(255 - np.asarray(mask.convert("L")))
    return gr.update(value=mask_outline(result, mask), visible=True)


def build(service: GenerationService, native_size: int) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            prompts = prompt_box("inpaint")
            editor = gr.ImageMask(label="Image — paint the area to regenerate", type="pil", image_mode="RGBA",
                                  brush=MASK_BRUSH, sources=["upload", "clipboard"], format="png", height=420,
                                  elem_id="inpaint_editor", transforms=())
            with gr.Row():
                mask_upload = SafeImage(label="…or upload a mask (white = inpaint)", type="filepath", image_mode=None,
                                sources=["upload", "clipboard"],
                                        height=160, elem_id="inpaint_mask_upload")
                invert = gr.Checkbox(value=False, label="Invert mask", elem_id="inpaint_invert")
            mode = gr.Radio(list(INPAINT_MODES), value="RePaint", label="Mode", elem_id="inpaint_mode",
                            info="RePaint: any model, known region re-noised every step. "
                                 "Inpainting model: a 9-channel UNet trained for it.")
            inpaint_model = gr.Dropdown(catalog.inpaint_models(), value=next(iter(catalog.inpaint_models()), None),
                                        allow_custom_value=True, label="Inpainting model (9-channel UNet)",
                                        visible=False, elem_id="inpaint_model")
            with gr.Row(visible=True) as repaint_row:
                repaint_r = gr.Slider(1, 10, value=1, step=1, label="RePaint resamplings r",
                                      info="r > 1 heals seams and costs r× the time", elem_id="inpaint_r")
                repaint_j = gr.Slider(1, 20, value=1, step=1, label="Jump length j", elem_id="inpaint_j")
            strength = gr.Slider(0, 1, value=1.0, step=0.01, label="Denoising strength", elem_id="inpaint_strength")
            with gr.Row():
                mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur (px, inside the mask)", elem_id="inpaint_mask_blur")
                masked_content = gr.Radio(list(MASKED_CONTENT), value="original", label="Masked content",
                                          elem_id="inpaint_masked_content")
            with gr.Row():
                area = gr.Radio(list(INPAINT_AREAS), value="whole picture", label="Inpaint area", elem_id="inpaint_area")
                padding = gr.Slider(0, 256, value=32, step=4, label="Only-masked padding (px)", elem_id="inpaint_padding")
            resize_mode = gr.Radio(list(RESIZE_MODES), value="just resize", label="Resize mode", elem_id="inpaint_resize_mode")
            sampler = sampler_controls("inpaint", service.limits, native_size)
            with gr.Accordion("Outpainting", open=False):
                with gr.Row():
                    left = gr.Slider(0, 512, value=0, step=8, label="Left", elem_id="outpaint_left")
                    right = gr.Slider(0, 512, value=0, step=8, label="Right", elem_id="outpaint_right")
                    up = gr.Slider(0, 512, value=0, step=8, label="Up", elem_id="outpaint_up")
                    down = gr.Slider(0, 512, value=0, step=8, label="Down", elem_id="outpaint_down")
                extend = gr.Button("Extend the canvas (new area masked)", elem_id="outpaint_extend")
            with gr.Accordion("ControlNet", open=False):
                panel_units = control_panel("inpaint", sampler.width, sampler.height)
                for unit in panel_units.units:
                    unit.enabled.value = False
            grid = xy_grid.grid_controls("inpaint", xy_grid.INPAINT_AXES)  # X/Y grid hook
        with gr.Column(scale=1):
            panel = result_panel("inpaint")
            show_outline = gr.Checkbox(value=False, label="Show the mask outline on the result", elem_id="inpaint_outline")
            outline = gr.Image(label="Result with mask outline", format="png", interactive=False, visible=False,
                               elem_id="inpaint_outline_image")

    mode.change(lambda m: (gr.update(visible=m == "inpainting model"), gr.update(visible=m == "RePaint")),
                mode, [inpaint_model, repaint_row], queue=False, api_visibility="private")

    def generate(prompt, negative, editor_value, mask_path, invert_mask, inpaint_mode, model, r, j, denoise, blur,
                 content, inpaint_area, pad, mode_resize, scheduler, steps, cfg, cfg_scale, eta, seed, batch_size,
                 batch_count, width, height, *control_and_grid, request: gr.Request, progress=gr.Progress()):
        control_values, grid_values = xy_grid.split_values(control_and_grid)  # X/Y grid hook

        def build_request():
            image = (editor_value or {}).get("background")
            if image is None:
                raise gr.Error("Upload an image to inpaint first.")
            mask = open_image(mask_path, "mask") if mask_path else painted_mask(editor_value)
            if mask is None:
                raise gr.Error("The mask is empty: paint over the area to regenerate (or upload a mask image).")
            return InpaintRequest(
                prompt=prompt, negative_prompt=negative, width=width, height=height, init_image=image, mask=mask,
                mode=inpaint_mode, inpaint_model=model or "", repaint_r=r, repaint_j=j, strength=denoise,
                mask_blur=blur, invert_mask=invert_mask, masked_content=content, inpaint_area=inpaint_area,
                padding=pad, resize_mode=mode_resize, control=control_from(list(control_values), width, height),
                sampling=sampling_from(scheduler, steps, cfg, cfg_scale, eta, seed, batch_size, batch_count),
            )

        yield from xy_grid.generate(service, build_request, grid_values, request.session_hash, progress)

    names = ["prompt", "negative_prompt", "image_and_mask", "mask_image", "invert_mask", "mode", "inpaint_model",
             "repaint_r", "repaint_j", "strength", "mask_blur", "masked_content", "inpaint_area", "padding",
             "resize_mode", "scheduler", "steps", "cfg", "cfg_scale", "eta", "seed", "batch_size", "batch_count",
             "width", "height"]
    names += [f"unit{u + 1}_{field}" for u in range(len(panel_units.units)) for field in UNIT_FIELDS] + ["guess_mode"]
    names += list(xy_grid.GRID_FIELDS)
    inputs = [prompts.prompt, prompts.negative, editor, mask_upload, invert, mode, inpaint_model, repaint_r, repaint_j,
              strength, mask_blur, masked_content, area, padding, resize_mode, *sampler.inputs(), *panel_units.inputs(),
              *grid.inputs()]
    event = panel.generate.click(with_session(generate, names), inputs, panel.outputs(), api_name="inpaint",
                                 **service.gpu_event)

    outline_inputs = [show_outline, editor, mask_upload, invert, panel.progress_preview]
    show_outline.change(outline_view, outline_inputs, outline, api_name="inpaint_outline")
    event.then(outline_view, outline_inputs, outline, api_visibility="private")

    def extend_canvas(editor_value, l, r, u, d):
        image = (editor_value or {}).get("background")
        if image is None:
            raise gr.Error("Upload an image first.")
        if not any((l, r, u, d)):
            raise gr.Error("Choose how many pixels to add on at least one side.")
        try:
            canvas, mask, _ = outpaint_canvas(image, int(l), int(r), int(u), int(d))
        except StudioError as error:
            raise gr.Error(str(error)) from error
        layer = Image.new("RGBA", canvas.size, (255, 255, 255, 0))
        layer.putalpha(mask)  # the new area is painted: it is what gets generated
        value = {"background": canvas, "layers": [layer], "composite": canvas}
        limits = service.limits
        return (value, min(limits.max_width, canvas.width // 8 * 8), min(limits.max_height, canvas.height // 8 * 8), "fill")

    extend.click(extend_canvas, [editor, left, right, up, down], [editor, sampler.width, sampler.height, masked_content],
                 api_visibility="private")
    wire_common(panel, sampler, service, interrupt_api=None)
