"""ControlNet units (up to 3): control image → preprocessor → map preview → model, weight,
guidance start/end; a pose editor (detected keypoints, presets, JSON, click-to-move joints).
Shared by the ControlNet tab and the inpainting tab."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.core import catalog
from pipelines.core.errors import StudioError
from pipelines.pose import PRESET_POSES, pose_from_json, preset_pose
from pipelines.preprocess import OPENPOSE_JOINTS
from pipelines.preprocess_extra import PREPROCESSORS, available_preprocessors, control_map
from pipelines.core.fields import assemble
from pipelines.core.requests import MAX_CONTROL_UNITS, Control, ControlUnit

from .common import SafeImage, open_image
from .fields import Form, take, widget
from .uploads import MODELS, catalogue_key, model_choices, resolve_model

POSE_PREPROCESSORS = ("pose (mediapipe)", "pose (openpose)")
MODEL_INFO = {False: "a ControlNet folder, .safetensors file or Hub id", True: "one of this host's ControlNets"}
PICK_RADIUS = 24  # px: how close a click must be to a joint to pick it


# Every preprocessor setting gets a widget from its Param declaration (shown while its
# preprocessor is chosen); two preprocessors may not give one name different meanings.
PARAMS: dict = {}
for _pre in PREPROCESSORS.values():
    for _name, _spec in _pre.params.items():
        assert PARAMS.setdefault(_name, _spec) == _spec, f"preprocessor setting {_name!r} declared twice"
UNIT_INPUTS = ("enabled", "use_edited_pose", "pose_json", *PARAMS)  # a unit's inputs that are not ControlUnit fields


@dataclass
class UnitWidgets:
    enabled: gr.Checkbox
    image: gr.Image
    preprocessor: gr.Dropdown
    params: dict  # setting name → widget
    model: gr.Dropdown
    weight: gr.Slider
    start: gr.Slider
    end: gr.Slider
    use_edited: gr.Checkbox
    pose_json: gr.Code
    control_map: gr.Image
    message: gr.Markdown
    selected_joint: gr.State


@dataclass
class ControlPanel:
    units: list[UnitWidgets]
    guess_mode: gr.Checkbox


def _default_model(preprocessor: str) -> str | None:
    entry = catalog.default_controlnet("pose" if preprocessor in POSE_PREPROCESSORS else "canny")
    return catalogue_key(entry) if entry else None


def _model(value) -> str:
    """The unit's ControlNet: a catalogue entry (or, where the host allows, a path or Hub id)."""
    return resolve_model(value, catalog.controlnets(), "ControlNet")


def _params(preprocessor: str, values: dict) -> tuple:
    """The chosen preprocessor's settings from a unit's values, as ControlUnit.params."""
    spec = PREPROCESSORS.get(preprocessor)
    return tuple((key, values[key]) for key in spec.params if values.get(key) is not None) if spec else ()


def unit_from(values: dict, width, height) -> ControlUnit | None:
    """One unit's values by name (ControlUnit fields plus UNIT_INPUTS) → a ControlUnit, or None when off."""
    own = take(values, UNIT_INPUTS)
    if not own.get("enabled"):
        return None
    if own.get("use_edited_pose") and own.get("pose_json"):
        # The edited pose is the map itself: draw it at the generation size.
        try:
            pose = pose_from_json(own["pose_json"]).resized(int(width), int(height))
        except ValueError as error:
            raise gr.Error(f"The pose JSON is not valid: {error}") from error
        return assemble(ControlUnit, values, image=pose.draw(), preprocessor="none", model=_model(values.get("model")))
    return assemble(ControlUnit, values, image=open_image(values.get("image"), "control image"),
                    params=_params(values.get("preprocessor"), own), model=_model(values.get("model")))


def control_from(values: dict, width, height) -> Control | None:
    """Takes every unit's inputs (unit<n>_<name>) and guess_mode out of a tab's values → a
    Control, or None when no unit is on."""
    units = []
    for n in range(1, MAX_CONTROL_UNITS + 1):
        prefix = f"unit{n}_"
        unit_values = {name[len(prefix):]: values.pop(name) for name in list(values) if name.startswith(prefix)}
        unit = unit_from(unit_values, width, height) if unit_values else None
        if unit is not None:
            units.append(unit)
    guess_mode = values.pop("guess_mode", False)
    return assemble(Control, {"guess_mode": guess_mode}, units=tuple(units)) if units else None


def _unit(form: Form, index: int, width: gr.Slider, height: gr.Slider) -> UnitWidgets:
    names = available_preprocessors()
    key = f"{form.tab}_cn{index}"
    unit = f"unit{index + 1}_"

    def field(name, elem=None, **overrides):  # a ControlUnit field's widget, registered as unit<n>_<name>
        return form.add(unit + name, widget(name, f"{key}_{elem or name}", **overrides))

    with gr.Accordion(f"ControlNet unit {index + 1}", open=index == 0, elem_id=key):
        enabled = form.add(unit + "enabled", gr.Checkbox(value=index == 0, label="Enable", elem_id=f"{key}_enabled"))
        with gr.Row():
            image = form.add(unit + "image", SafeImage(label="Control image", type="filepath", image_mode=None,
                                                       sources=["upload", "clipboard"], height=256, elem_id=f"{key}_image"))
            control_map_image = gr.Image(label="Control map (pose: click a joint, then where it goes)", format="png",
                                         interactive=False, height=256, elem_id=f"{key}_map")
        with gr.Row():
            preprocessor = field("preprocessor", component=gr.Dropdown, choices=names, value="canny", info=PREPROCESSORS["canny"].description)
            preview = gr.Button("Preview map", elem_id=f"{key}_preview", scale=0)
        with gr.Row():
            params = {name: form.add(unit + name, widget(spec, f"{key}_{name}", visible=name in PREPROCESSORS["canny"].params))
                      for name, spec in PARAMS.items()}
        model = field("model", component=gr.Dropdown, choices=model_choices(catalog.controlnets()),
                      value=_default_model("canny"), allow_custom_value=True, info=MODEL_INFO[MODELS.catalogue_only])
        with gr.Row():
            weight = field("weight")
            start = field("start")
            end = field("end")
        message = gr.Markdown(elem_id=f"{key}_message")
        with gr.Accordion("Pose editor", open=False, visible=False, elem_id=f"{key}_pose_editor") as editor:
            with gr.Row():
                preset = gr.Dropdown(list(PRESET_POSES), value=None, label="Preset pose", elem_id=f"{key}_preset")
                redraw = gr.Button("Redraw from JSON", elem_id=f"{key}_redraw", scale=0)
            use_edited = form.add(unit + "use_edited_pose", gr.Checkbox(
                value=False, label="Use the edited pose (instead of detecting again)", elem_id=f"{key}_use_edited"))
            pose_json = form.add(unit + "pose_json", gr.Code(value="", language="json", label="Keypoints (OpenPose JSON, pixels)",
                                                             lines=6, elem_id=f"{key}_pose_json"))
        selected = gr.State(None)

    def on_preprocessor(name):
        own = PREPROCESSORS[name].params
        return (gr.update(info=PREPROCESSORS[name].description), *(gr.update(visible=p in own) for p in params),
                gr.update(visible=name in POSE_PREPROCESSORS), gr.update(value=_default_model(name) or gr.skip()))

    preprocessor.change(on_preprocessor, preprocessor, [preprocessor, *params.values(), editor, model],
                        queue=False, api_visibility="private")

    def run_preview(image, preprocessor, width, height, **settings):
        picture = open_image(image, "control image")
        if picture is None:
            raise gr.Error("Upload a control image first.")
        try:
            result = control_map(preprocessor, picture, int(width), int(height), **dict(_params(preprocessor, settings)))
        except StudioError as error:
            raise gr.Error(str(error)) from error
        pose = result.pose.to_json(indent=1) if result.pose is not None and result.pose.found else ""
        note = result.message or f"{preprocessor}: {result.seconds * 1000:.0f} ms"
        return result.image, pose, note, False

    preview.click(run_preview, inputs_kwargs={"image": image, "preprocessor": preprocessor, **params, "width": width,
                                              "height": height},
                  outputs=[control_map_image, pose_json, message, use_edited],
                  api_name=f"{key}_preview" if index == 0 else None, api_visibility="public" if index == 0 else "private")

    def draw(pose_text):
        try:
            pose = pose_from_json(pose_text)
        except ValueError as error:
            raise gr.Error(f"The pose JSON is not valid: {error}") from error
        return pose.draw(), True, None

    def choose_preset(name, w, h):
        if not name:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        pose = preset_pose(name, int(w), int(h))
        return pose.draw(), pose.to_json(indent=1), True, f"Preset “{name}”: click a joint in the map to move it."

    def click_map(pose_text, chosen, event: gr.SelectData):
        if not pose_text:
            return gr.skip(), gr.skip(), None, "Detect a pose or pick a preset first."
        pose = pose_from_json(pose_text)
        x, y = event.index
        if chosen is None:
            nearest = pose.nearest_joint(x, y)
            if nearest is None or nearest[2] > PICK_RADIUS:
                return gr.skip(), gr.skip(), None, "No joint there: click on a joint's dot."
            return gr.skip(), gr.skip(), (nearest[0], nearest[1]), f"Picked {OPENPOSE_JOINTS[nearest[1]]}: now click where it goes."
        person, joint = chosen
        moved = pose.move_joint(joint, x, y, person=person)
        return moved.draw(), moved.to_json(indent=1), None, f"Moved {OPENPOSE_JOINTS[joint]} to ({x}, {y})."

    redraw.click(draw, pose_json, [control_map_image, use_edited, selected], api_visibility="private")
    preset.change(choose_preset, [preset, width, height], [control_map_image, pose_json, use_edited, message],
                  api_visibility="private")
    control_map_image.select(click_map, [pose_json, selected], [control_map_image, pose_json, selected, message],
                             api_visibility="private").then(lambda: True, None, use_edited, api_visibility="private")
    return UnitWidgets(enabled, image, preprocessor, params, model, weight, start, end,
                       use_edited, pose_json, control_map_image, message, selected)


def control_panel(form: Form, width: gr.Slider, height: gr.Slider, count: int = MAX_CONTROL_UNITS) -> ControlPanel:
    """count units and the guess-mode box; their inputs join the form (unit<n>_<name>, guess_mode)."""
    units = [_unit(form, index, width, height) for index in range(count)]
    return ControlPanel(units, form.field("guess_mode"))
