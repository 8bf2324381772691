"""PNG info tab: read the generation parameters back from an image and send them to a tab."""
from __future__ import annotations

import gradio as gr

from pipelines.metadata import infotext_to_fields, parse_infotext, read_infotext
from pipelines.requests import HIRES_UPSCALERS
from pipelines.schedulers import SCHEDULER_NAMES

from .common import SafeImage, open_image


def read(image_path):
    """Image file → (raw infotext, parsed parameters)."""
    image = open_image(image_path, "image")
    if image is None:
        return "", {}
    text = read_infotext(image)
    if not text:
        return "This image carries no generation parameters.", {}
    return text, parse_infotext(text)


def build(tabs: gr.Tabs, txt2img, img2img) -> None:
    with gr.Row():
        with gr.Column():
            image = SafeImage(label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"], elem_id="pnginfo_image")
        with gr.Column():
            raw = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="pnginfo_text")
            parsed = gr.JSON(label="Parsed", elem_id="pnginfo_parsed")
            with gr.Row():
                to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")
                to_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_img2img")
            notes = gr.Markdown(elem_id="pnginfo_notes")
    image.change(read, image, [raw, parsed], api_name="png_info")

    keys = ["prompt", "negative_prompt", "scheduler", "steps", "cfg", "cfg_scale", "eta", "seed", "width", "height",
            "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h"]
    hires_keys = ["enable_hr", "hr_upscaler", "hr_scale", "hr_second_pass_steps", "denoising_strength", "hr_resize_x",
                  "hr_resize_y"]

    def targets(tab) -> list:
        s = tab.sampler
        return [tab.prompts.prompt, tab.prompts.negative, s.scheduler, s.steps, s.cfg, s.cfg_scale, s.eta, s.seed, s.width,
                s.height, *s.extra.inputs()]

    def values(parameters: dict, keys=keys) -> tuple[list, list[str]]:
        fields, notes = infotext_to_fields(parameters or {}, SCHEDULER_NAMES)
        offered = [choice[1] if isinstance(choice, tuple) else choice for choice in txt2img.hires.upscaler.choices]
        if fields.get("hr_upscaler", HIRES_UPSCALERS[0]) not in offered:
            notes.append(f"Hires upscaler {fields.pop('hr_upscaler')!r} is not offered here; the upscaler was left as it was.")
        return [fields.get(k, gr.skip()) for k in keys], notes

    def send_txt2img(parameters):
        updates, notes = values(parameters, keys + hires_keys)
        return [*updates, "\n".join(notes), gr.Tabs(selected="txt2img")]

    def send_img2img(parameters, image_path):
        updates, notes = values(parameters)
        strength = (parameters and infotext_to_fields(parameters, SCHEDULER_NAMES)[0].get("strength")) or gr.skip()
        return [*updates, image_path or gr.skip(), strength, "\n".join(notes), gr.Tabs(selected="img2img")]

    to_txt2img.click(send_txt2img, parsed, [*targets(txt2img), *txt2img.hires.inputs(), notes, tabs], api_visibility="private")
    to_img2img.click(send_img2img, [parsed, image],
                     [*targets(img2img), img2img.init_image, img2img.strength, notes, tabs], api_visibility="private")
