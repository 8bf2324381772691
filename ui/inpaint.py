"""Inpaint tab: paint a mask on an image and regenerate what is under it, with RePaint
(any model) or a 9-channel inpainting model; only-masked crops; outpainting; ControlNet."""
from __future__ import annotations

import gradio as gr
import numpy as np
from PIL import Image, ImageFilter

from pipelines.core import catalog
from pipelines.core.errors import StudioError
from pipelines.masks import outpaint_canvas
from pipelines.core.fields import assemble
from pipelines.core.requests import ControlUnit, InpaintRequest

from . import sdxl, xy_grid
from .common import GenerationService, SafeImage, TabParts, open_image, prompt_box, result_panel, sampler_controls, wire_common
from .control_units import control_from, control_panel
from .fields import Form
from .uploads import SafeImageMask, model_choices, resolve_model

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


def build(service: GenerationService, native_size: int) -> TabParts:
    form = Form("inpaint", service.limits)
    with gr.Row():
        with gr.Column(scale=1):
            prompt_box(form, service.count_tokens)
            editor = form.add("image_and_mask", SafeImageMask(
                label="Image — paint the area to regenerate", type="pil", image_mode="RGBA", brush=MASK_BRUSH,
                sources=["upload", "clipboard"], format="png", height=420, elem_id="inpaint_editor", transforms=()))
            with gr.Row():
                mask_upload = form.add("mask_image", SafeImage(
                    label="…or upload a mask (white = inpaint)", type="filepath", image_mode=None,
                    sources=["upload", "clipboard"], height=160, elem_id="inpaint_mask_upload"))
                invert = form.field("invert_mask", elem="invert")
            mode = form.field("mode", component=gr.Radio)
            inpaint_choices = model_choices(catalog.inpaint_models())  # shown relative to the app folder
            inpaint_model = form.field("inpaint_model", elem="model", component=gr.Dropdown, choices=inpaint_choices,
                                       value=next((key for _, key in inpaint_choices), None), allow_custom_value=True,
                                       visible=False)
            with gr.Row(visible=True) as repaint_row:
                form.field("repaint_r", elem="r")
                form.field("repaint_j", elem="j")
            form.field("strength", of=InpaintRequest)
            with gr.Row():
                form.field("mask_blur")
                masked_content = form.field("masked_content", component=gr.Radio)
            with gr.Row():
                form.field("inpaint_area", elem="area", component=gr.Radio)
                form.field("padding")
            form.field("resize_mode", component=gr.Radio, value="just resize")
            sampler = sampler_controls(form, native_size)
            xl = sdxl.sdxl_controls(form, service.backend, refiner=False)
            with gr.Accordion("Outpainting", open=False):
                with gr.Row():
                    left = gr.Slider(0, 512, value=0, step=8, label="Left", elem_id="outpaint_left")
                    right = gr.Slider(0, 512, value=0, step=8, label="Right", elem_id="outpaint_right")
                    up = gr.Slider(0, 512, value=0, step=8, label="Up", elem_id="outpaint_up")
                    down = gr.Slider(0, 512, value=0, step=8, label="Down", elem_id="outpaint_down")
                extend = gr.Button("Extend the canvas (new area masked)", elem_id="outpaint_extend")
            with gr.Accordion("ControlNet", open=False):
                panel_units = control_panel(form, sampler.width, sampler.height)
                for unit in panel_units.units:
                    unit.enabled.value = False
            xy_grid.grid_controls(form, InpaintRequest, ControlUnit)
        with gr.Column(scale=1):
            panel = result_panel("inpaint")
            show_outline = gr.Checkbox(value=False, label="Show the mask outline on the result", elem_id="inpaint_outline")
            outline = gr.Image(label="Result with mask outline", format="png", interactive=False, visible=False,
                               elem_id="inpaint_outline_image")

    mode.change(lambda m: (gr.update(visible=m == "inpainting model"), gr.update(visible=m == "RePaint")),
                mode, [inpaint_model, repaint_row], queue=False, api_visibility="private")

    def generate(request: gr.Request, progress=gr.Progress(), **values):
        def build_request():
            editor_value, mask_path = values.pop("image_and_mask"), values.pop("mask_image")
            image = (editor_value or {}).get("background")
            if image is None:
                raise gr.Error("Upload an image to inpaint first.")
            mask = open_image(mask_path, "mask") if mask_path else painted_mask(editor_value)
            if mask is None:
                raise gr.Error("The mask is empty: paint over the area to regenerate (or upload a mask image).")
            control = control_from(values, values["width"], values["height"])
            # Only the inpainting-model mode loads a model; on a locked host, from the catalogue only.
            model = values.pop("inpaint_model", None)
            model = resolve_model(model, catalog.inpaint_models(), "inpainting") if values.get("mode") == "inpainting model" else ""
            return assemble(InpaintRequest, values, init_image=image, mask=mask, control=control, inpaint_model=model)

        yield from xy_grid.generate(service, build_request, values, request.session_hash, progress)

    event = panel.generate.click(generate, inputs_kwargs=form.inputs, outputs=panel.outputs(), api_name="inpaint",
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
    return TabParts(form, panel, xl)
