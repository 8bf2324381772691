"""PNG info tab: read the generation parameters back from an image and send them to a tab."""
from __future__ import annotations

import gradio as gr

from pipelines.core.metadata import infotext_to_fields, parse_infotext, read_infotext
from pipelines.core.requests import FIELDS

from .common import SafeImage, open_image


def read(image_path):
    """Image file → (raw infotext, parsed parameters)."""
    image = open_image(image_path, "image")
    if image is None:
        return "", {}
    try:
        text = read_infotext(image)
    except Exception as error:  # a crafted text chunk or EXIF block (Pillow raises many kinds)
        raise gr.Error("This image's metadata could not be read, so it shows no generation parameters.") from error
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

    def wire(button: gr.Button, tab, tab_id: str) -> None:
        """Send every parameter the infotext holds to the tab's widget of the same name (and,
        to a tab with an init image, the image itself)."""
        targets = {name: w for name, w in tab.form.widgets.items() if name in FIELDS and FIELDS[name].infotext}
        takes_image = "init_image" in tab.form.widgets

        def send(parameters, image_path):
            fields, messages = infotext_to_fields(parameters or {})
            updates = [fields.get(name, gr.skip()) for name in targets]
            image = [image_path or gr.skip()] if takes_image else []
            return [*updates, *image, "\n".join(messages), gr.Tabs(selected=tab_id)]

        image_target = [tab.form.widgets["init_image"]] if takes_image else []
        button.click(send, [parsed, image], [*targets.values(), *image_target, notes, tabs], api_visibility="private")

    wire(to_txt2img, txt2img, "txt2img")
    wire(to_img2img, img2img, "img2img")
