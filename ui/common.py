"""Widget groups every generation tab shares (prompt box, sampler settings, seed, results)
and the one place that runs a request: validation errors → messages, live progress and
preview, saving, per-session interrupt."""
from __future__ import annotations

import logging
from contextlib import contextmanager
import time
from dataclasses import dataclass
from typing import Callable

import gradio as gr
from PIL import Image

from pipelines.core import catalog
from pipelines.core.backend import Backend
from pipelines.core.errors import StudioError
from pipelines.core.batch_grid import batch_grid
from pipelines.core.grid import CELLS_KEY, cells_chunk, grid_infotext
from pipelines.core.jobs import StepInfo
from pipelines.core.metadata import PNG_KEY
from pipelines.core.requests import Limits
from pipelines.core.schedulers import ETA_SCHEDULERS

from .fields import Form
from .jobs import SessionJobs, cancel_waiting
from .limits import HostLimits
from .outputs import OutputStore, with_infotext
from .progress import Eta
from .send_to import SendButtons, send_buttons
from .uploads import SafeImage, open_received_image  # noqa: F401  (SafeImage: re-exported for the tabs)

log = logging.getLogger(__name__)

PREVIEW_INTERVAL_S = 0.25
INTERNAL_ERROR = ("Generation failed because of a problem on the server (it is in the server's log). "
                  "Try again, or try a smaller size or fewer steps.")
GPU = "gpu"  # one concurrency id for every GPU event: one generation at a time per device




def open_image(path: str | None, what: str) -> Image.Image | None:
    """Open an uploaded file fully: only files this server received (see ui/uploads.py)."""
    return open_received_image(path, what)


@dataclass
class PromptBox:
    prompt: gr.Textbox
    negative: gr.Textbox


def token_counter(box: gr.Textbox, count: Callable[[str], str], elem_id: str) -> gr.HTML:
    """A1111's live 'n/75' under a prompt box (75 tokens per chunk; 150, 225, … past that)."""
    counter = gr.HTML(count(box.value or ""), elem_id=elem_id, padding=False, min_height=0)
    box.change(count, box, counter, queue=False, show_progress="hidden", trigger_mode="always_last",
               api_visibility="private")
    return counter


def prompt_box(form: Form, count_tokens: Callable[[str], str] | None = None) -> PromptBox:
    """Prompt and negative prompt; with count_tokens (GenerationService.count_tokens), each
    gets a live token counter in its frame, at the lower right corner."""
    with gr.Group():
        prompt = form.field("prompt", lines=3, placeholder="a large red circle on a white background")
        if count_tokens:
            token_counter(prompt, count_tokens, f"{form.tab}_prompt_token_count")
    with gr.Group():
        negative = form.field("negative_prompt", elem="negative", lines=2)
        if count_tokens:
            token_counter(negative, count_tokens, f"{form.tab}_negative_token_count")
    extra_networks(form.tab, prompt)
    return PromptBox(prompt, negative)


def insert_tag(prompt: str | None, tag: str) -> str:
    """Append a LoRA tag / embedding word to the prompt (A1111's extra-networks click)."""
    prompt = (prompt or "").rstrip()
    return f"{prompt} {tag}".strip() if prompt else tag


def extra_networks(tab: str, prompt: gr.Textbox) -> None:
    """LoRA and embedding browser: clicking a name writes <lora:name:1> (or the embedding's
    word) into the prompt. The lists come from the model catalogue (Refresh rescans it)."""
    def samples(kind):
        return [[name] for name in catalog.names(kind)] or [["(none)"]]

    with gr.Accordion("LoRA & embeddings", open=False, elem_id=f"{tab}_extra_networks"):
        loras = gr.Dataset(components=["textbox"], samples=samples("lora"), label="LoRA (click: add <lora:name:1>)",
                           type="values", elem_id=f"{tab}_lora_list", samples_per_page=24)
        words = gr.Dataset(components=["textbox"], samples=samples("embedding"), label="Embeddings (click: add the word)",
                           type="values", elem_id=f"{tab}_embedding_list", samples_per_page=24)
        refresh = gr.Button("Refresh lists", size="sm", elem_id=f"{tab}_extra_refresh")

    def add(sample, text, lora: bool):
        name = (sample or [""])[0]
        if not name or name == "(none)":
            return gr.skip()
        return insert_tag(text, f"<lora:{name}:1>" if lora else name)

    def rescan():
        catalog.refresh()  # new LoRAs work at once; new embeddings load with the next generation
        return gr.Dataset(samples=samples("lora")), gr.Dataset(samples=samples("embedding"))

    loras.click(lambda s, t: add(s, t, True), [loras, prompt], prompt, queue=False, api_visibility="private")
    words.click(lambda s, t: add(s, t, False), [words, prompt], prompt, queue=False, api_visibility="private")
    refresh.click(rescan, None, [loras, words], queue=False, api_visibility="private")


def vae_field(form: Form) -> gr.Dropdown:
    """The request's VAE: the model's own ("Automatic") or one from the models folder's VAE/."""
    return form.field("vae", component=gr.Dropdown, choices=["Automatic", *catalog.names("vae")], allow_custom_value=True)


@dataclass
class SamplerControls:
    scheduler: gr.Dropdown
    steps: gr.Slider
    cfg: gr.Checkbox
    cfg_scale: gr.Slider
    eta: gr.Slider
    width: gr.Slider
    height: gr.Slider
    batch_count: gr.Slider
    batch_size: gr.Slider
    seed: gr.Number
    random_seed: gr.Button
    reuse_seed: gr.Button
    clip_skip: gr.Slider


def sampler_controls(form: Form, native_size: int) -> SamplerControls:
    tab = form.tab
    with gr.Row():
        scheduler = form.field("scheduler")
        steps = form.field("steps")
        clip_skip = form.field("clip_skip", scale=0, min_width=200)
    with gr.Row():  # a row of its own: beside the sliders its help text wrapped into a tall box
        form.field("turbo")
        form.field("token_merging")
    with gr.Row():
        cfg = form.field("cfg")
        cfg_scale = form.field("cfg_scale")
        eta = form.field("eta", visible=False)
    with gr.Row():
        width = form.field("width", value=native_size)
        height = form.field("height", value=native_size)
    with gr.Row():
        batch_count = form.field("batch_count")
        batch_size = form.field("batch_size")
    with gr.Row(equal_height=True):
        seed = form.field("seed", scale=4)
        random_seed = gr.Button("Random", elem_id=f"{tab}_random_seed", scale=0, min_width=80, size="sm")
        reuse_seed = gr.Button("Last seed", elem_id=f"{tab}_reuse_seed", scale=0, min_width=80, size="sm")
    with gr.Accordion("Extra seed options (variation seed)", open=False, elem_id=f"{tab}_seed_extra"):
        with gr.Row():  # A1111's "Extra": variation seed + strength, resize seed from width/height
            form.field("subseed")
            form.field("subseed_strength")
        with gr.Row():
            form.field("seed_resize_from_w", elem="seed_resize_w")
            form.field("seed_resize_from_h", elem="seed_resize_h")
    scheduler.change(lambda name: gr.update(visible=name in ETA_SCHEDULERS), scheduler, eta, queue=False, api_visibility="private")
    cfg.change(lambda on: gr.update(interactive=on), cfg, cfg_scale, queue=False, api_visibility="private")
    random_seed.click(lambda: -1, None, seed, queue=False, api_visibility="private")
    return SamplerControls(scheduler, steps, cfg, cfg_scale, eta, width, height, batch_count, batch_size, seed, random_seed,
                           reuse_seed, clip_skip)


@dataclass
class ResultPanel:
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    progress_preview: gr.Image
    gallery: gr.Gallery
    send: SendButtons
    notes: gr.Markdown
    infotext: gr.Textbox
    last_seed: gr.State

    def outputs(self) -> list:
        return [self.progress_preview, self.gallery, self.notes, self.infotext, self.last_seed]


@dataclass
class TabParts:
    """What other tabs need of a generation tab: its inputs by name and its result panel
    (send-to targets them; remembered settings read them)."""
    form: Form
    panel: ResultPanel
    sdxl: gr.Accordion | None = None  # the SDXL-only fields, shown only with an SDXL model


def result_panel(tab: str) -> ResultPanel:
    # The run buttons' row: a bar fixed at the bottom of a phone's screen (ui/studio.css).
    with gr.Row(elem_classes=["run-buttons"], elem_id=f"{tab}_run_buttons"):
        generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate", scale=3, elem_classes=["generate"])
        interrupt = gr.Button("Interrupt", variant="stop", elem_id=f"{tab}_interrupt", scale=1, elem_classes=["interrupt"])
        skip = gr.Button("Skip", elem_id=f"{tab}_skip", scale=1, min_width=60)
    progress_preview = gr.Image(label="Live preview", interactive=False, format="png", height=160, elem_id=f"{tab}_preview")
    gallery = gr.Gallery(label="Results", format="png", columns=4, height="auto", elem_id=f"{tab}_gallery", interactive=False)
    send = send_buttons(tab, gallery)
    notes = gr.Markdown(elem_id=f"{tab}_notes")
    infotext = gr.Textbox(label="Generation parameters", lines=3, interactive=False, elem_id=f"{tab}_infotext")
    return ResultPanel(generate, interrupt, skip, progress_preview, gallery, send, notes, infotext, gr.State(-1))


class PreviewThrottle:
    """Each preview is encoded and sent to the browser: at most a few per second, or a fast
    GPU would spend more time on previews than on denoising."""

    def __init__(self):
        self.last = -PREVIEW_INTERVAL_S

    def due(self, event: StepInfo) -> bool:
        if event.preview is None or time.monotonic() - self.last < PREVIEW_INTERVAL_S:
            return False
        self.last = time.monotonic()
        return True


class GenerationService:
    """Runs requests for every tab: the backend (one manager, a pool of them, Ray Serve
    workers: a pipelines.core.backend.Backend) streams per-step progress and previews back to the
    session that asked."""

    def __init__(self, backend: Backend, limits: Limits, store: OutputStore, host: HostLimits = HostLimits(),
                 grid_for_batches: bool = False):
        self.backend = backend
        self.grid_for_batches = grid_for_batches
        self.limits = limits
        self.store = store
        self.host = host
        self.jobs = SessionJobs()
        self.blocks = None  # the gr.Blocks, once built: Interrupt also drops this session's queued jobs
        self._workers: dict[str, int] = {}  # worker id (host:pid:device) → a number shown to users
        # As many GPU jobs at once as the backend has devices (a pool) or replicas (Ray).
        self.gpu_event = {"concurrency_id": GPU, "concurrency_limit": backend.concurrency}

    def count_tokens(self, text: str | None) -> str:
        """The token counter's text, e.g. '12/75' ('' when the backend cannot count now)."""
        try:
            counted = self.backend.count_tokens(text or "")
        except Exception as error:  # a counter must never break typing
            log.debug("token count failed: %s", error)
            counted = None
        if not counted:
            return ""
        tokens, limit = counted
        return (f"<div style='text-align:right;font-size:0.8em;opacity:0.75;padding:0 8px 2px'>"
                f"{int(tokens)}/{int(limit)}</div>")

    def worker_label(self, worker: str) -> str:
        """Which worker made an image, without its host name or process id."""
        number = self._workers.setdefault(worker, len(self._workers) + 1)
        return f"worker {number}"

    @contextmanager
    def _session_job(self, session: str):
        """This session's Job while its generator runs: errors become messages for that
        session only (the server keeps serving), and the job is always finished — cancelled
        first, which stops the work when the client went away or pressed Stop."""
        job = self.jobs.start(session)
        try:
            yield job
        except StudioError as error:
            raise gr.Error(str(error)) from error
        except gr.Error:
            raise
        except Exception as error:
            log.error("generation failed", exc_info=error)  # a bug: the traceback stays in the server log
            raise gr.Error(INTERNAL_ERROR) from error
        finally:
            job.cancel()  # a no-op when finished
            self.jobs.finish(session, job)

    def stream(self, build: Callable[[], object], session: str, progress: gr.Progress):
        """Generator of result-panel outputs for one request built by build()."""
        try:
            request = build()
            self.host.check_request(request)  # before the queue's worker touches the model
            request = self.limits.normalize(request)
        except StudioError as error:
            raise gr.Error(str(error)) from error
        previews, eta = PreviewThrottle(), Eta()
        with self._session_job(session) as job:
            progress(0, desc="Waiting for the model…")
            for event in self.backend.stream(request, job):
                if isinstance(event, StepInfo):
                    where = f"Batch {event.batch + 1}/{event.batch_count}, step {event.step}/{event.total}"
                    progress(event.fraction, desc=eta.describe(event.fraction, where))
                    if previews.due(event):
                        yield event.preview, gr.skip(), gr.skip(), gr.skip(), gr.skip()
                    continue
                yield self._final(event)

    def run(self, request, session: str, progress: gr.Progress):
        """A request that is not a generation (the Diffusion lab) through the same job path:
        this session's Job (its Interrupt stops it between steps), progress per step, errors
        as messages; returns the backend's result."""
        self.host.check_request(request)  # the lab's prompts have the same limit
        eta = Eta()
        with self._session_job(session) as job:
            progress(0, desc="Waiting for the model…")
            for event in self.backend.stream(request, job):
                if isinstance(event, StepInfo):
                    progress(event.fraction, desc=eta.describe(event.fraction, f"Step {event.step}/{event.total}"))
                    continue
                return event

    def _final(self, result):
        saved = self.store.save(result.task, result.images)
        items = [str(p) for p in saved.paths] if saved.paths else [with_infotext(item) for item in result.images]
        gallery = [(item, f"seed {image.seed}") for item, image in zip(items, result.images)]
        worker = f" on {self.worker_label(result.worker)}" if result.worker else ""
        # Paragraphs apart: Markdown joins single-newline lines into one (the worker ran into the path).
        paragraphs = [f"{len(result.images)} image(s) in {result.seconds:.1f} s{worker}"
                      + (" — interrupted" if result.interrupted else "")]
        if result.notes:
            paragraphs.append("\n".join(f"- {note}" for note in result.notes))
        if saved.note:
            paragraphs.append(saved.note)
        if self.grid_for_batches and len(result.images) > 1:
            grid_item, grid_note = self._batch_grid(result)
            gallery.append((grid_item, "grid"))
            paragraphs += [grid_note] if grid_note else []
        infotext = result.images[0].infotext if result.images else ""
        seed = result.images[0].seed if result.images else gr.skip()
        preview = result.images[0].image if result.images else gr.skip()
        return preview, gallery, "\n\n".join(paragraphs), infotext, seed

    def _batch_grid(self, result):
        """A1111's batch grid: every image of the job in one labelled picture, saved with the
        first image's infotext (PNG info reads it like any image's). Last in the gallery, so
        the images keep their places."""
        grid = batch_grid([image.image for image in result.images], [f"seed {image.seed}" for image in result.images])
        infotext = result.images[0].infotext
        saved = self.store.save_grid(result.task, grid, infotext, {})
        if saved.paths:
            return str(saved.paths[0]), saved.note
        grid.info[PNG_KEY] = infotext
        return grid, saved.note

    # ----------------------------------------------------------------- X/Y grids (issue 8)
    def stream_grid(self, build_plan: Callable[[], object], compose: Callable, session: str, progress: gr.Progress):
        """Generator of result-panel outputs for an X/Y grid: build_plan() gives a
        pipelines.core.grid.GridPlan whose cells run one after another as one job (progress over
        the whole grid, one Interrupt for all); compose(plan, images) draws the grid from the
        finished cells. An interrupt keeps the cells finished so far."""
        try:
            plan = build_plan()
            for cell in plan.cells[:1]:  # every cell shares the base request's prompts
                self.host.check_request(cell)
            self.host.check_grid(plan)
        except StudioError as error:
            raise gr.Error(str(error)) from error
        started, previews, eta = time.monotonic(), PreviewThrottle(), Eta()
        results, total = [], len(plan.cells)
        with self._session_job(session) as job:
            progress(0, desc="Waiting for the model…")
            for index, cell in enumerate(plan.cells):
                if job.cancelled:
                    break
                for event in self.backend.stream(cell, job):
                    if isinstance(event, StepInfo):
                        done = (index + event.fraction) / total
                        where = f"Cell {index + 1}/{total} ({plan.cell_label(index)}), step {event.step}/{event.total}"
                        progress(done, desc=eta.describe(done, where))
                        if previews.due(event):
                            yield event.preview, gr.skip(), gr.skip(), gr.skip(), gr.skip()
                    elif not event.interrupted:  # a cell cut short is not a finished cell
                        results.append(event)
            yield self._final_grid(plan, results, compose, time.monotonic() - started)

    def _final_grid(self, plan, results, compose, seconds: float):
        """The grid first, then every finished cell (each PNG with its own infotext)."""
        total = len(plan.cells)
        lines = [f"X/Y grid: {len(results)} of {total} cells in {seconds:.1f} s"
                 + (" — interrupted" if len(results) < total else "")]
        notes = list(dict.fromkeys([*plan.notes, *(note for r in results for note in r.notes)]))
        lines += [f"- {note}" for note in notes]
        if not results:
            return gr.skip(), [], "\n".join(lines + ["No cell finished, so there is no grid."]), "", gr.skip()
        cells = [result.images[0] for result in results]  # a grid cell is one image (batch 1)
        missing = [None] * (total - len(cells))
        grid = compose(plan, [cell.image for cell in cells] + missing)
        infotext = grid_infotext(plan, cells[0].infotext)
        chunks = {CELLS_KEY: cells_chunk([cell.infotext for cell in cells] + missing)}
        task = results[0].task
        grid_saved = self.store.save_grid(task, grid, infotext, chunks)
        cells_saved = self.store.save(task, cells) if grid_saved.paths else grid_saved
        lines += [note for note in dict.fromkeys((grid_saved.note, cells_saved.note)) if note]
        if grid_saved.paths and cells_saved.paths:
            items = [str(p) for p in grid_saved.paths + cells_saved.paths]
        else:
            grid_item = grid.copy()
            grid_item.info.update({PNG_KEY: infotext, **chunks})
            items = [grid_item] + [with_infotext(cell) for cell in cells]
        captions = ["X/Y grid"] + [plan.cell_label(i) for i in range(len(cells))]
        return grid, list(zip(items, captions)), "\n".join(lines), infotext, cells[0].seed


def wire_common(panel: ResultPanel, sampler: SamplerControls, service: GenerationService, interrupt_api: str | None):
    """Seed reuse and the interrupt button (per session; never queued behind generations)."""
    sampler.reuse_seed.click(lambda seed: seed, panel.last_seed, sampler.seed, queue=False, api_visibility="private")

    async def interrupt(request: gr.Request) -> str:
        waiting = await cancel_waiting(service.blocks, request.session_hash)
        stopped = service.jobs.interrupt(request.session_hash)
        if not stopped and not waiting:
            return "Nothing of yours is running."
        return "Interrupting…" + (f" ({waiting} queued job(s) cancelled)" if waiting else "")

    panel.interrupt.click(
        interrupt, None, panel.notes, queue=False,
        api_name=interrupt_api, api_visibility="public" if interrupt_api else "private",
    )

    def skip(request: gr.Request) -> str:
        skipped = service.jobs.skip(request.session_hash)
        return "Skipping this image; the batch goes on…" if skipped else "Nothing of yours is running."

    panel.skip.click(skip, None, panel.notes, queue=False, api_name=interrupt_api and "skip",
                     api_visibility="public" if interrupt_api else "private")
