"""Compatible queued requests through the UNet as one batch, each user's request unchanged.

Many users on one GPU: small UNet calls under-use a big GPU (an H200 spends 4.89 ms per latent at
batch 2, 3.45 at batch 8), so when the device becomes free the request at the head of the line
takes up to N−1 *compatible* requests waiting behind it and they are sampled together.
Transparent to callers: each thread still calls manager.run(request) and gets its own result.

What stays per member (so a batched image equals the one run alone, up to kernel numerics):
- prompt, negative prompt, clip skip: encoded per member, concatenated along the batch;
- seeds (and variation seeds): each image's initial noise and per-step noise come from its
  own CPU generator, exactly as alone (noise.py; diffusers draws per generator from a list);
- CFG scale: the combine ε_u + s·(ε_c − ε_u) is per sample, so s becomes a per-sample
  vector (PerSampleScale);
- progress, live preview, interrupt and skip: one StepReporter per member; a member that is
  interrupted or skipped leaves the batch at once with its image so far (its slot is computed
  on, unused, until the others finish); the batch stops when every member has left;
- infotext, notes, errors: a member whose preparation fails, or a batch that fails as a whole
  (out of memory …), falls back to running alone at its own turn, so an error only ever
  reaches the request that caused it.

What must be equal (batch_key): task (txt2img, or img2img with the same strength and no
variation seed; each member its own init image), size, steps, sampler, η, whether CFG runs,
the LoRA set and VAE (they are written into the shared weights), the prompt length in
77-token chunks (cross-attention length), SDXL's size conditioning; no ControlNet, hires fix
or refiner, batch count 1. Requests never join a batch across a model load (Batcher.alone).

A crowd's batches are filled, not just taken (Batcher.gather_s): once two requests have waited
in line together, a head that finds fewer than max_batch waiting holds the device up to 15 ms
for more to arrive (the dynamic batchers of inference servers call it a queue delay). Without
it, a burst of 8 is served as 1 + 4 + 3: the first starts alone before the others are in line.
A lone user's requests (never two waiting at once) never wait.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

from .core.jobs import GeneratedImage, GenerationResult, Job
from .core.prompt_syntax import parse_prompt
from .core.requests import Img2ImgRequest, Txt2ImgRequest
from .core.schedulers import build_scheduler
from .fast_path import FifoLock
from .generation import StepReporter, close_batch, decode, pooled_kwargs, prompt_notes
from .noise import NoiseSpec, sampler_noise, without_host_sync
from .preview import DenoisedTap
from .prompt_encoding import encode_prompts, tokenize

log = logging.getLogger(__name__)

CUDA_MAX_BATCH = 4
GATHER_S = 0.015  # the longest a crowd's head waits for its batch to fill (~7 % of a 512² image on an H200)
CROWD_MEMORY_S = 60.0  # how long after two requests last waited together the line still gathers


def default_max_batch(device: torch.device) -> int:
    """4 latents on CUDA, 1 (off) elsewhere. On a GPU a batch of 4 costs far less than 4 single
    calls, so every member finishes sooner than it would waiting in line. 8 gives more at 512²
    (8 concurrent requests on an H200: 1.44× serial against 1.26–1.32× with 4), but a call then
    carries 16 latents (at SDXL's 1024², more memory than most cards have), the head of the line
    waits for the whole batch, and each batch size is one more CUDA graph / compiled signature:
    `--max-batch 8` is for a 512² service that takes bursts. On a CPU a single request already keeps
    the cores busy with real models, so batching would mostly make the first user wait for the
    others' images (a conservative default: --max-batch raises it on any device)."""
    return CUDA_MAX_BATCH if device.type == "cuda" else 1


class PerSampleScale(float):
    """A CFG scale per latent of the batch, handed to diffusers as `guidance_scale`: it compares
    as a float (max of the scales: whether CFG runs, equal for all members by batch_key) and
    multiplies a (B, …) tensor sample by sample, computing as a scalar multiply would (fp32,
    rounded to the tensor's dtype), so each member gets ε_u + s_k·(ε_c − ε_u) bit for bit."""

    scales: tuple[float, ...]

    def __new__(cls, scales):
        value = super().__new__(cls, max(scales))
        value.scales = tuple(float(s) for s in scales)
        return value

    def __mul__(self, other):
        if isinstance(other, torch.Tensor) and other.dim() > 0 and other.shape[0] == len(self.scales):
            # Made once per device: building it every step would copy host→device (a sync) every step.
            cache = self.__dict__.setdefault("_on", {})
            if other.device not in cache:
                cache[other.device] = torch.tensor(self.scales, dtype=torch.float32, device=other.device)
            scale = cache[other.device]
            return (scale.view(-1, *[1] * (other.dim() - 1)) * other.float()).to(other.dtype)
        return float(self) * other

    __rmul__ = __mul__


@dataclass(eq=False)
class Entry:
    """One caller's request waiting in line, and where its outcome is left."""

    request: Txt2ImgRequest
    on_step: Callable | None
    job: Job
    epoch: int = 0
    solo: bool = False  # taken out of a batch: runs alone at its own turn
    done: threading.Event = field(default_factory=threading.Event)
    result: GenerationResult | None = None
    error: BaseException | None = None
    wake: Callable[[], None] = lambda: None  # tells the line its waiter may stop waiting

    @property
    def images(self) -> int:
        return self.request.sampling.batch_size

    def deliver(self, result: GenerationResult | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()
        self.wake()

    def outcome(self) -> GenerationResult:
        if self.error is not None:
            raise self.error
        return self.result


class NotBatched(Exception):
    """Fewer than two members could be prepared: everyone runs alone."""


class Batcher:
    """The manager's line (its FifoLock) with batching: see the module docstring.

    run_alone(request, on_step, job) runs one request holding the lock (the manager's usual
    path); key(request) is batch_key or None; run_together(entries) samples a batch holding the
    lock and delivers to every entry (or raises: the entries not yet served then run alone)."""

    def __init__(self, lock: FifoLock, max_batch: int, run_alone, key, run_together, gather_s: float = GATHER_S):
        self.lock, self.max_batch, self.gather_s = lock, max(1, int(max_batch)), gather_s
        self._run_alone, self._key, self._run_together = run_alone, key, run_together
        self._order = threading.Lock()  # a place in line and the pending list change together
        self._pending: list[Entry] = []
        self._arrived = threading.Condition(self._order)
        self._crowd_at = -math.inf  # when two requests last waited in line together
        self._epoch = 0  # bumped by every turn no batch may cross (a model load)
        self.served: list[int] = []  # requests per generation, in order (health, tests, bench)

    @property
    def waiting(self) -> int:
        """Requests queued for batching, not yet started."""
        return len(self._pending)

    @contextmanager
    def alone(self):
        """Hold the lock for work that no batch may cross (loading a model): a request queued
        after it never joins a batch that runs before it."""
        with self._order:
            self._epoch += 1
            ticket = self.lock.ticket()
        self.lock.wait(ticket)
        try:
            yield
        finally:
            self.lock.release()

    def run(self, request, on_step, job: Job) -> GenerationResult:
        entry = Entry(request, on_step, job, wake=self.lock.wake)
        with self._order:
            entry.epoch = self._epoch
            self._pending.append(entry)
            if len(self._pending) > 1:
                self._crowd_at = time.monotonic()
            ticket = self.lock.ticket()
            self._arrived.notify_all()
        if not self.lock.wait(ticket, unless=entry.done.is_set):
            return entry.outcome()  # served in an earlier request's batch
        try:
            self._forget(entry)
            if entry.done.is_set():
                return entry.outcome()
            members = [entry] if entry.solo else self._take(entry)
            self.served.append(len(members))
            if len(self.served) > 10_000:
                del self.served[:5_000]  # a long-running server keeps the recent history only
            if len(members) > 1:
                log.debug("sampling %d waiting requests as one batch", len(members))
                try:
                    self._run_together(members)
                except Exception:  # noqa: BLE001 — each member learns its own error by running alone
                    for member in members[1:]:
                        member.solo = True
                if entry.done.is_set():
                    return entry.outcome()
            return self._run_alone(request, on_step, job)
        finally:
            self.lock.release()

    def _forget(self, entry: Entry) -> None:
        with self._order:
            if entry in self._pending:
                self._pending.remove(entry)

    def _safe_key(self, entry: Entry):
        try:
            return self._key(entry.request)
        except Exception:  # noqa: BLE001 — a request the engine cannot key runs alone and meets its error there
            return None

    def _take(self, head: Entry) -> list[Entry]:
        """The head and, in arrival order, waiting requests with its key, up to max_batch images."""
        if self.max_batch <= 1 or head.job.cancelled or head.images >= self.max_batch:
            return [head]
        with self._order:
            candidates = list(self._pending)
        gather = (self.gather_s > 0 and time.monotonic() - self._crowd_at <= CROWD_MEMORY_S
                  and head.images + sum(e.images for e in candidates) < self.max_batch)
        if not (candidates or gather):
            return [head]  # nobody waiting and no crowd: no key to compute
        key = self._safe_key(head)
        if key is None:
            return [head]  # a request that never batches (ControlNet) waits for nobody
        if gather:
            with self._order:
                self._arrived.wait_for(lambda: head.images + sum(e.images for e in self._pending) >= self.max_batch,
                                       timeout=self.gather_s)
                candidates = list(self._pending)
        members, images = [head], head.images
        for entry in candidates:
            if images >= self.max_batch:
                break
            if (entry.epoch != head.epoch or entry.solo or entry.job.cancelled or entry.done.is_set()
                    or images + entry.images > self.max_batch or self._safe_key(entry) != key):
                continue
            self._forget(entry)
            members.append(entry)
            images += entry.images
        return members


# ----------------------------------------------------------------------------- the engine side


def batch_key(pipe, family, request) -> tuple | None:
    """What must be equal for two requests to share one UNet batch; None: runs alone."""
    from .families import call_kwargs

    s = request.sampling
    if type(request) is Txt2ImgRequest:
        task = ("txt2img",)
    elif type(request) is Img2ImgRequest:
        # Strength picks the timesteps; 0 denoising steps or strength 1 take other paths
        # (the input back; pure noise); variation seeds vary the noise add_noise gets (per batch).
        if int(s.steps * request.strength) == 0 or request.strength >= 1.0:
            return None
        if NoiseSpec.of(request, [s.seed]).varies:
            return None
        task = ("img2img", request.strength)
    else:
        return None
    if request.control is not None or request.enable_hr:
        return None
    if request.refiner.strip() not in ("", "None") or s.batch_count != 1:
        return None
    if request.turbo != "Off":
        return None  # the batched sampler has no turbo cycle (turbo.py): such a request runs alone
    if getattr(pipe.unet.config, "time_cond_proj_dim", None) is not None:
        return None  # guidance-embedding UNets (LCM) take one scale for the batch
    chunks = len(tokenize(pipe, parse_prompt(request.prompt)).chunks)
    if s.guidance_scale > 1:
        chunks = max(chunks, len(tokenize(pipe, parse_prompt(request.negative_prompt)).chunks))
    loras = tuple(sorted((t.name, t.weight) for t in request.loras if t.weight != 0.0))
    return task + (request.width, request.height, s.steps, s.scheduler, s.eta, s.guidance_scale > 1, loras,
                   request.vae, chunks, repr(sorted(call_kwargs(family, request).items())),
                   request.token_merging)  # the batch runs under one ratio (token_merging.py)


@dataclass
class Member:
    """One entry as the batch sees it: its infotext maker and its slice of the batch."""

    entry: Entry
    infotext: Callable[[int], str]  # seed → this request's own infotext
    stamp: Callable[[GenerationResult], GenerationResult]  # seconds, worker
    seeds: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    embeddings: object = None
    reporter: StepReporter | None = None
    rows: slice = field(default_factory=lambda: slice(0))


def sample_together(pipe, members: list[Member], scheduler_config: dict, call_kwargs: dict,
                    preview_weights, preview_every: int, init_image=None) -> None:
    """One diffusers call for every member (same key); each gets its own GenerationResult.
    img2img: init_image(request) is a member's init image fitted to the size; the pipeline gets
    one per image and encodes and noises each with that image's own generator (as alone)."""
    prepared: list[Member] = []
    for member in members:
        request = member.entry.request
        if member.entry.job.cancelled:
            member.entry.solo = True  # alone it ends at once, with no image, as a cancelled job does
            continue
        member.entry.job.take_skip()  # a skip from before the start does not carry over (run_batches)
        try:
            member.seeds = request.sampling.image_seeds()[0]
            member.notes = list(request.notes) + prompt_notes(pipe, request)
            member.embeddings = encode_prompts(pipe, request.prompt, request.negative_prompt, request.clip_skip,
                                               request.sampling.cfg)
        except Exception:  # noqa: BLE001 — it runs alone at its turn and meets its own error there
            member.entry.solo = True
            continue
        if prepared and member.embeddings.cond.shape != prepared[0].embeddings.cond.shape:
            member.entry.solo = True
            continue
        prepared.append(member)
    if len(prepared) < 2:
        raise NotBatched()
    head = prepared[0].entry.request
    s = head.sampling
    scheduler = without_host_sync(build_scheduler(s.scheduler, scheduler_config))
    tap = DenoisedTap(scheduler)
    pipe.scheduler = scheduler
    task = head.task
    noise_call = {"strength": head.strength} if task == "img2img" else {}
    latents, generators, images, row = [], [], [], 0
    for member in prepared:
        request = member.entry.request
        noise, gens = sampler_noise(pipe, scheduler, noise_call, NoiseSpec.of(request, member.seeds),
                                    request.width, request.height)
        if task == "img2img":
            images += [init_image(request)] * len(member.seeds)
        else:
            latents.append(noise["latents"])
        generators += gens
        member.rows = slice(row, row + len(member.seeds))
        row += len(member.seeds)
        member.reporter = StepReporter(member.entry.job, member.entry.on_step, preview_weights, preview_every, 0, 1)

    def expand(tensors):
        return torch.cat([t.expand(len(m.seeds), *t.shape[1:]) for t, m in zip(tensors, prepared)])

    embeddings = [m.embeddings for m in prepared]
    cfg = embeddings[0].uncond is not None
    pooled = {}
    if embeddings[0].pooled is not None:
        pooled = {k: torch.cat([pooled_kwargs(e, len(m.seeds))[k] for e, m in zip(embeddings, prepared)])
                  for k in pooled_kwargs(embeddings[0], 1)}
    scales = PerSampleScale([m.entry.request.sampling.guidance_scale for m in prepared for _ in m.seeds])
    active = list(prepared)

    def finish(member: Member, rows: torch.Tensor) -> None:
        notes = list(member.notes)
        rows, interrupted = close_batch(member.entry.job, member.reporter, rows, 0, notes)
        images = decode(pipe, rows)
        result = GenerationResult(task, [GeneratedImage(image, seed, member.infotext(seed))
                                         for image, seed in zip(images, member.seeds)], notes, interrupted)
        member.entry.deliver(member.stamp(result))

    def callback(p, index, timestep, tensors):
        current, x0 = tensors["latents"], tap.latest
        for member in list(active):
            rows = member.rows
            try:
                stop = member.reporter(index, p.num_timesteps, current[rows], None if x0 is None else x0[rows])
                if stop:  # interrupted or skipped: leaves now with its image so far
                    active.remove(member)
                    finish(member, current[rows])
            except Exception as error:  # noqa: BLE001 — one member's failure (its progress callback) is its own
                if member in active:
                    active.remove(member)
                member.entry.deliver(error=error)
        if not active:
            p._interrupt = True
        return {}

    out = pipe(
        prompt_embeds=expand([e.cond for e in embeddings]),
        negative_prompt_embeds=expand([e.uncond for e in embeddings]) if cfg else None,
        **pooled,
        height=head.height,
        width=head.width,
        num_inference_steps=s.steps,
        guidance_scale=scales,
        eta=s.eta,
        generator=generators,
        output_type="latent",
        callback_on_step_end=callback,
        **({"latents": torch.cat(latents)} if latents else {}),
        **({"image": images, **noise_call} if task == "img2img" else {}),
        **call_kwargs,
    ).images
    for member in active:  # decoded one member at a time: the VAE's peak memory stays what it is alone
        finish(member, out[member.rows])
