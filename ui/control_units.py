"""ControlNet units (up to 3): control image → preprocessor → map preview → model, weight,
guidance start/end; a pose editor (detected keypoints, presets, JSON, click-to-move joints).
Shared by the ControlNet tab and the inpainting tab."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines import catalog
from pipelines.errors import StudioError
from pipelines.pose import PRESET_POSES, pose_from_json, preset_pose
from pipelines.preprocess import OPENPOSE_JOINTS
from pipelines.preprocess_extra import PREPROCESSORS, available_preprocessors, control_map
from pipelines.requests import MAX_CONTROL_UNITS, Control, ControlUnit

from .common import SafeImage, open_image
from .uploads import MODELS, catalogue_key, model_choices, resolve_model

POSE_PREPROCESSORS = ("pose (mediapipe)", "pose (openpose)")
MODEL_INFO = {False: "a ControlNet folder, .safetensors file or Hub id", True: "one of this host's ControlNets"}
PICK_RADIUS = 24  # px: how close a click must be to a joint to pick it


@dataclass
class UnitWidgets:
    enabled: gr.Checkbox
    image: gr.Image
    preprocessor: gr.Dropdown
    low: gr.Slider
    high: gr.Slider
    min_visibility: gr.Slider
    model: gr.Dropdown
    weight: gr.Slider
    start: gr.Slider
    end: gr.Slider
    use_edited: gr.Checkbox
    pose_json: gr.Code
    control_map: gr.Image
    message: gr.Markdown
    selected_joint: gr.State

    def inputs(self) -> list:
        """Order matches unit_from()."""
        return [self.enabled, self.image, self.preprocessor, self.low, self.high, self.min_visibility,
                self.model, self.weight, self.start, self.end, self.use_edited, self.pose_json]


UNIT_FIELDS = ("enabled", "image", "preprocessor", "low", "high", "min_visibility", "model", "weight", "start", "end",
               "use_edited_pose", "pose_json")
PER_UNIT = len(UNIT_FIELDS)


@dataclass
class ControlPanel:
    units: list[UnitWidgets]
    guess_mode: gr.Checkbox

    def inputs(self) -> list:
        return [w for unit in self.units for w in unit.inputs()] + [self.guess_mode]


def _default_model(preprocessor: str) -> str | None:
    entry = catalog.default_controlnet("pose" if preprocessor in POSE_PREPROCESSORS else "canny")
    return catalogue_key(entry) if entry else None


def _model(value) -> str:
    """The unit's ControlNet: a catalogue entry (or, where the host allows, a path or Hub id)."""
    return resolve_model(value, catalog.controlnets(), "ControlNet")


def _params(preprocessor: str, low, high, min_visibility) -> tuple:
    if preprocessor == "canny":
        return (("low", low), ("high", high))
    if preprocessor == "pose (mediapipe)":
        return (("min_visibility", min_visibility),)
    return ()


def unit_from(enabled, image_path, preprocessor, low, high, min_visibility, model, weight, start, end, use_edited,
              pose_json, width, height) -> ControlUnit | None:
    if not enabled:
        return None
    if use_edited and pose_json:
        # The edited pose is the map itself: draw it at the generation size.
        try:
            pose = pose_from_json(pose_json).resized(int(width), int(height))
        except ValueError as error:
            raise gr.Error(f"The pose JSON is not valid: {error}") from error
        return ControlUnit(model=_model(model), image=pose.draw(), preprocessor="none", weight=weight, start=start, end=end)
    return ControlUnit(model=_model(model), image=open_image(image_path, "control image"), preprocessor=preprocessor,
                       params=_params(preprocessor, low, high, min_visibility), weight=weight, start=start, end=end)


def control_from(values: list, width, height) -> Control | None:
    """Flat widget values (ControlPanel.inputs order) → a Control, or None when no unit is on."""
    *unit_values, guess_mode = values
    units = []
    for index in range(0, len(unit_values), PER_UNIT):
        unit = unit_from(*unit_values[index:index + PER_UNIT], width, height)
        if unit is not None:
            units.append(unit)
    return Control(units=tuple(units), guess_mode=bool(guess_mode)) if units else None


def _unit(tab: str, index: int, width: gr.Slider, height: gr.Slider) -> UnitWidgets:
    names = available_preprocessors()
    key = f"{tab}_cn{index}"
    with gr.Accordion(f"ControlNet unit {index + 1}", open=index == 0, elem_id=key):
        enabled = gr.Checkbox(value=index == 0, label="Enable", elem_id=f"{key}_enabled")
        with gr.Row():
            image = SafeImage(label="Control image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                              height=256, elem_id=f"{key}_image")
            control_map_image = gr.Image(label="Control map (pose: click a joint, then where it goes)", format="png",
                                         interactive=False, height=256, elem_id=f"{key}_map")
        with gr.Row():
            preprocessor = gr.Dropdown(names, value="canny", label="Preprocessor", elem_id=f"{key}_preprocessor",
                                       info=PREPROCESSORS["canny"].description)
            preview = gr.Button("Preview map", elem_id=f"{key}_preview", scale=0)
        with gr.Row():
            low = gr.Slider(0, 255, value=100, step=1, label="Canny low threshold", elem_id=f"{key}_low")
            high = gr.Slider(0, 255, value=200, step=1, label="Canny high threshold", elem_id=f"{key}_high")
            min_visibility = gr.Slider(0, 1, value=0.5, step=0.05, label="Joint visibility threshold", visible=False,
                                       elem_id=f"{key}_min_visibility")
        choices = model_choices(catalog.controlnets())
        model = gr.Dropdown(choices, value=_default_model("canny"), allow_custom_value=True, label="ControlNet model",
                            info=MODEL_INFO[MODELS.catalogue_only], elem_id=f"{key}_model")
        with gr.Row():
            weight = gr.Slider(0, 2, value=1, step=0.05, label="Control weight", elem_id=f"{key}_weight")
            start = gr.Slider(0, 1, value=0, step=0.01, label="Guidance start", elem_id=f"{key}_start")
            end = gr.Slider(0, 1, value=1, step=0.01, label="Guidance end", elem_id=f"{key}_end")
        message = gr.Markdown(elem_id=f"{key}_message")
        with gr.Accordion("Pose editor", open=False, visible=False, elem_id=f"{key}_pose_editor") as editor:
            with gr.Row():
                preset = gr.Dropdown(list(PRESET_POSES), value=None, label="Preset pose", elem_id=f"{key}_preset")
                redraw = gr.Button("Redraw from JSON", elem_id=f"{key}_redraw", scale=0)
            use_edited = gr.Checkbox(value=False, label="Use the edited pose (instead of detecting again)",
                                     elem_id=f"{key}_use_edited")
            pose_json = gr.Code(language="json", label="Keypoints (OpenPose JSON, pixels)", lines=6,
                                elem_id=f"{key}_pose_json")
        selected = gr.State(None)

    def on_preprocessor(name):
        is_pose = name in POSE_PREPROCESSORS
        return (gr.update(info=PREPROCESSORS[name].description), gr.update(visible=name == "canny"),
                gr.update(visible=name == "canny"), gr.update(visible=name == "pose (mediapipe)"),
                gr.update(visible=is_pose), gr.update(value=_default_model(name) or gr.skip()))

    preprocessor.change(on_preprocessor, preprocessor, [preprocessor, low, high, min_visibility, editor, model],
                        queue=False, api_visibility="private")

    def run_preview(image_path, name, low_value, high_value, visibility, w, h):
        image = open_image(image_path, "control image")
        if image is None:
            raise gr.Error("Upload a control image first.")
        try:
            result = control_map(name, image, int(w), int(h), **dict(_params(name, low_value, high_value, visibility)))
        except StudioError as error:
            raise gr.Error(str(error)) from error
        pose = result.pose.to_json(indent=1) if result.pose is not None and result.pose.found else ""
        note = result.message or f"{name}: {result.seconds * 1000:.0f} ms"
        return result.image, pose, note, False

    preview.click(run_preview, [image, preprocessor, low, high, min_visibility, width, height],
                  [control_map_image, pose_json, message, use_edited], api_name=f"{key}_preview" if index == 0 else None,
                  api_visibility="public" if index == 0 else "private")

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
    return UnitWidgets(enabled, image, preprocessor, low, high, min_visibility, model, weight, start, end,
                       use_edited, pose_json, control_map_image, message, selected)


def control_panel(tab: str, width: gr.Slider, height: gr.Slider, count: int = MAX_CONTROL_UNITS) -> ControlPanel:
    units = [_unit(tab, index, width, height) for index in range(count)]
    guess_mode = gr.Checkbox(value=False, label="Guess mode",
                             info="the ControlNet gets no prompt and must recognise the content from the map",
                             elem_id=f"{tab}_guess_mode")
    return ControlPanel(units, guess_mode)
