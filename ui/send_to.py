"""Send-to buttons under every result gallery: the selected image goes to img2img, Inpaint
or a ControlNet unit (or the ControlNet tab's init image), with the prompt and every
parameter its infotext holds (the declarations' infotext mapping, as PNG info uses), and
that tab opens. In Inpaint, "Continue from this result" puts the result back in the editor:
iterative inpainting, and outpainting that extends the last result, not the original."""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from pipelines.core.metadata import infotext_to_fields, parse_infotext, read_infotext
from pipelines.core.requests import FIELDS

from .fields import Form
from .uploads import require_received

# target → button label; a tab shows the targets other than itself (Inpaint: "Continue").
TARGETS = {"img2img": "→ img2img", "inpaint": "→ Inpaint", "controlnet": "→ ControlNet unit 1",
           "controlnet_init": "→ ControlNet init image"}
CONTINUE_LABEL = "Continue from this result"


@dataclass
class SendButtons:
    buttons: dict[str, gr.Button]
    selected: gr.State  # index of the gallery image the user clicked (0 when none)


@dataclass
class Target:
    """Where a sent image lands: the tab (its id and inputs), the input that takes the image
    (as a file path, or an Inpaint editor value), and inputs switched on with it."""
    tab_id: str
    form: Form
    image: str  # the form's input name
    switch_on: tuple[str, ...] = ()
    editor: bool = False  # an ImageMask: the image is its background, with no mask painted
    fields: dict = field(init=False)

    def __post_init__(self):
        self.fields = {name: w for name, w in self.form.widgets.items() if name in FIELDS and FIELDS[name].infotext}

    def outputs(self) -> list:
        widgets = self.form.widgets
        return [*self.fields.values(), widgets[self.image], *(widgets[name] for name in self.switch_on)]


def send_buttons(tab: str, gallery: gr.Gallery) -> SendButtons:
    with gr.Row(elem_id=f"{tab}_send_row"):
        buttons = {}
        for target, label in TARGETS.items():
            if target == tab == "inpaint":
                label = CONTINUE_LABEL
            elif target == tab:
                continue
            elem = "inpaint_continue" if label == CONTINUE_LABEL else f"{tab}_send_{target}"
            buttons[target] = gr.Button(label, size="sm", elem_id=elem, min_width=100)
    selected = gr.State(0)

    def select(event: gr.SelectData) -> int:
        return event.index if isinstance(event.index, int) else 0

    gallery.select(select, None, selected, queue=False, api_visibility="private")
    gallery.change(lambda: 0, None, selected, queue=False, api_visibility="private")
    return SendButtons(buttons, selected)


def chosen_image(gallery, index) -> str:
    """The file of the gallery item the user selected (the first when none was)."""
    if not gallery:
        raise gr.Error("There is no result to send yet: generate an image first.")
    index = index if isinstance(index, int) and 0 <= index < len(gallery) else 0
    item = gallery[index]
    # The gallery value comes from the client: a path it names must be a file this server
    # gave out or received, before it is read or sent on to another tab (which would serve it).
    return require_received(item[0] if isinstance(item, (tuple, list)) else item)


def image_fields(path: str) -> dict:
    """The request fields a result's infotext holds (prompt, steps, size, seed, …)."""
    from .common import open_image  # common imports this module

    text = read_infotext(open_image(path, "result"))
    if not text:
        return {}
    fields, notes = infotext_to_fields(parse_infotext(text))
    for note in notes:
        gr.Info(note)
    return fields


def wire(send: SendButtons, gallery: gr.Gallery, targets: dict[str, Target], tabs: gr.Tabs) -> None:
    """Connect one result panel's buttons to their targets."""
    for name, button in send.buttons.items():
        target = targets[name]

        def sender(target=target):
            def handler(gallery_value, index):
                path = chosen_image(gallery_value, index)
                fields = image_fields(path)
                image = {"background": path, "layers": [], "composite": path} if target.editor else path
                updates = [fields.get(name, gr.skip()) for name in target.fields]
                return [*updates, image, *(True for _ in target.switch_on), gr.Tabs(selected=target.tab_id)]

            return handler

        button.click(sender(), [gallery, send.selected], [*target.outputs(), tabs], queue=False,
                     api_visibility="private")


def targets_of(img2img, inpaint, controlnet) -> dict[str, Target]:
    """The send-to targets, given the tabs' parts (each with .form)."""
    return {
        "img2img": Target("img2img", img2img.form, "init_image"),
        "inpaint": Target("inpaint", inpaint.form, "image_and_mask", editor=True),
        "controlnet": Target("controlnet", controlnet.form, "unit1_image", switch_on=("unit1_enabled",)),
        "controlnet_init": Target("controlnet", controlnet.form, "init_image", switch_on=("use_init_image",)),
    }


def wire_all(sources: list, targets: dict[str, Target], tabs: gr.Tabs) -> None:
    for source in sources:
        wire(source.panel.send, source.panel.gallery, targets, tabs)
