"""What users bring on top of a checkpoint: LoRAs, textual-inversion embeddings and VAEs, for
one manager's base pipeline (every derived task pipeline shares its modules).

- **LoRA** (kohya/A1111 .safetensors and diffusers/PEFT files, read by diffusers'
  ``lora_state_dict``): injected once as a named PEFT adapter into the UNet and text
  encoder(s), and kept (LRU, `capacity`). Per request only the *active set and weights*
  change (``set_weights_and_activate_adapters``); a request without LoRAs disables the adapter
  layers, so they compute ``base_layer(x)`` exactly: nothing is reloaded, copied or left
  behind between users. Fusing (LoRA merged into the weights, no extra matmuls) pays off on a
  GPU when one set is used many times in a row: ``FUSE_AFTER`` identical requests on CUDA
  merge it; the touched weights are backed up on the host first and copied back on unfuse, so
  the next request sees the base bit for bit (fp16 ``w + Δ − Δ`` would not be).
- **Embeddings** from embeddings/: loaded into the tokenizer + text encoder at model load and
  on Refresh with the file stem as the word (diffusers ``load_textual_inversion``); written
  in a prompt, the word is the embedding, as in A1111.
- **VAE** per request: the model's own ("Automatic") or one from VAE/ (a single file in
  A1111's/LDM layout or diffusers', or a diffusers folder), cached and swapped into the shared
  pipelines for the request only.

The text-encoder side of a LoRA goes through PEFT directly (``inject_adapter_in_model``):
transformers 5.24's own adapter loading demands a PEFT release the registry does not have.
SDXL fits the same code: its pipeline class reads the state dict, and ``text_encoder_2`` is
one more encoder in ``TEXT_ENCODERS``.
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .core import catalog
from .core.errors import ModelLoadError, RequestError
from .core.hashes import lora_hash, model_hash

log = logging.getLogger(__name__)

AUTOMATIC_VAE = "Automatic"
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")  # SD 1.x/2.x: the first; SDXL: both
FUSE_AFTER = 3  # identical LoRA sets in a row before a CUDA manager fuses them
MAX_LORAS_PER_REQUEST = 16


# ----------------------------------------------------------------------------- LoRA
def peft_tolerates_old_torchao() -> None:
    """peft 0.21 raises ImportError on *every* LoRA injection when a torchao older than 0.16 is
    installed (its torchao dispatcher asks is_torchao_available(), which raises instead of
    answering). That dispatcher only serves torchao-quantized weights, which this app never
    hands to peft: with an old torchao present, answer "not available" there instead."""
    from peft import import_utils

    try:
        import_utils.is_torchao_available()
        return
    except ImportError:
        pass
    from peft.tuners.lora import torchao as lora_torchao
    from peft.utils import quantization_utils

    for module in (lora_torchao, quantization_utils):
        module.is_torchao_available = lambda: False
    log.info("torchao older than peft supports: peft's torchao LoRA layers are off")


def _text_encoder_lora(text_encoder, state_dict: dict, alphas: dict | None, prefix: str, adapter: str) -> bool:
    """The `prefix.` part of a diffusers-format LoRA state dict into a CLIP text encoder."""
    from diffusers.loaders.lora_base import _create_lora_config
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    part = {k[len(prefix) + 1:]: v for k, v in state_dict.items() if k.startswith(prefix + ".")}
    if not part:
        return False
    part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
    if not hasattr(text_encoder, "text_model"):  # transformers 5 flattened CLIPTextModel
        part = {k.removeprefix("text_model."): v for k, v in part.items()}
    ranks = {k: v.shape[1] for k, v in part.items() if k.endswith("lora_B.weight")}
    if alphas:
        alphas = {k[len(prefix) + 1:]: v for k, v in alphas.items() if k.split(".")[0] == prefix}
        if not hasattr(text_encoder, "text_model"):
            alphas = {k.removeprefix("text_model."): v for k, v in alphas.items()}
    config = _create_lora_config(part, alphas or None, None, ranks, is_unet=False)
    inject_adapter_in_model(config, text_encoder, adapter_name=adapter)
    result = set_peft_model_state_dict(text_encoder, part, adapter_name=adapter)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if unexpected:
        raise ValueError(f"{len(unexpected)} LoRA tensors of the text encoder match no layer")
    text_encoder.to(device=text_encoder.device, dtype=text_encoder.dtype)
    return True


FAMILY_LABELS = {"SD": "SD 1.x or 2.x", "SDXL": "SDXL"}


def lora_family(path: str) -> str | None:
    """Which family a LoRA file was trained for, from its text-encoder keys: SDXL's name both
    encoders (kohya lora_te1_/lora_te2_, diffusers text_encoder_2.), SD 1.x/2.x's one
    (lora_te_, text_encoder.). None when it has no text-encoder part (a UNet-only LoRA)."""
    from .families import single_file_keys

    keys = single_file_keys(path)
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys):
        return "SDXL"
    if any(k.startswith(("lora_te_", "text_encoder.")) for k in keys):
        return "SD"
    return None


def load_lora_into(pipe, path: str, adapter: str) -> list[str]:
    """Inject one LoRA file as adapter `adapter` into pipe's UNet and text encoder(s); returns
    the parts it touched. Raises on a file that is not a LoRA for this architecture."""
    peft_tolerates_old_torchao()
    # unet_config: kohya's SDXL LoRAs name the UNet's layers in the original (SGM) layout
    # (lora_unet_input_blocks_4_1_…); diffusers maps them to its own names only with the config.
    state_dict, alphas = type(pipe).lora_state_dict(path, unet_config=pipe.unet.config)
    touched = []
    if any(k.startswith("unet.") for k in state_dict):
        type(pipe).load_lora_into_unet(state_dict, alphas, unet=pipe.unet, adapter_name=adapter, _pipeline=pipe)
        touched.append("unet")
    for name in TEXT_ENCODERS:
        encoder = getattr(pipe, name, None)
        if encoder is not None and _text_encoder_lora(encoder, state_dict, alphas, name, adapter):
            touched.append(name)
    if not touched:
        raise ValueError("no UNet or text-encoder LoRA tensors found")
    return touched


def _lora_modules(pipe) -> list[torch.nn.Module]:
    return [m for m in [getattr(pipe, "unet", None)] + [getattr(pipe, n, None) for n in TEXT_ENCODERS] if m is not None]


def _has_adapter(module, adapter: str) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) and adapter in getattr(m, "lora_A", {}) for m in module.modules())


@dataclass
class LoraSlot:
    name: str  # catalogue name, as written in <lora:name:w>
    adapter: str  # PEFT adapter name (safe characters only)
    source: str
    hash: str
    parts: list[str]


class LoraSet:
    """Loaded LoRAs of one base pipeline and which of them are active."""

    def __init__(self, capacity: int = 8, fuse_always: bool = False):
        self.capacity = max(1, capacity)
        # With the GPU fast path the UNet's kernels are compiled and captured as CUDA graphs:
        # LoRA must then change weight *values* in place (fusing), never which code runs.
        self.fuse_always = fuse_always
        self.slots: OrderedDict[str, LoraSlot] = OrderedDict()
        self._counter = 0
        self.active: tuple = ()
        self.fused: tuple | None = None
        self._backup: dict[int, torch.Tensor] = {}
        self._repeats = 0
        # Called before and after adapter state changes: the fast path's background compile
        # traces outside the request lock and retraces if a change overlapped its trace.
        self.on_change: Callable[[], None] | None = None
        # A UNet that runs in place of the base's (the 9-channel inpainting UNet): the LoRAs'
        # UNet halves go into it too, and the names of those that did not fit its layers.
        self.extra_unet = None
        self.extra_misses: set[str] = set()

    def _modules(self, pipe) -> list[torch.nn.Module]:
        return _lora_modules(pipe) + ([self.extra_unet] if self.extra_unet is not None else [])

    @contextmanager
    def _changing(self):
        """Adapter state changes inside: the fast path hears of it before and after."""
        if self.on_change:
            self.on_change()
        try:
            yield
        finally:
            if self.on_change:
                self.on_change()

    def _mark(self, modules) -> None:
        for module in modules:
            # The fast path keeps graphs of modules whose LoRA layers only ever act merged
            # (or disabled): both compute base_layer(x), reading weights changed in place.
            if any(True for _ in _tuner_layers(module)):
                module._sd_studio_has_lora = True
                module._sd_studio_lora_merged_only = self.fuse_always

    def get(self, pipe, name: str) -> LoraSlot:
        if name in self.slots:
            self.slots.move_to_end(name)
            return self.slots[name]
        source = catalog.resolve("lora", name) or catalog.refresh_if_stale().resolve("lora", name)  # dropped in since the last scan?
        if source is None:
            known = ", ".join(catalog.names("lora")[:12]) or "none: put .safetensors files in the models folder's Lora/"
            raise RequestError(f"Unknown LoRA “{name}” in the prompt. LoRAs here: {known}.")
        from .families import family_of_pipeline

        made_for, loaded = lora_family(source), family_of_pipeline(pipe).name
        if made_for is not None and made_for != loaded:
            raise RequestError(f"LoRA “{name}” is made for {FAMILY_LABELS[made_for]} models and the loaded model is "
                               f"{FAMILY_LABELS[loaded]}: use a LoRA made for {FAMILY_LABELS[loaded]}, or load such a model.")
        self._counter += 1
        adapter = f"lora{self._counter}"
        if getattr(pipe.unet, "original_attn_processors", None) is not None and not self.fuse_always:
            # fused QKV reads to_qkv, not the to_q/to_k/to_v layers LoRAs patch; when LoRAs
            # are always fused (fast path) to_qkv is refreshed from them instead (_refresh_fused_qkv)
            pipe.unet.unfuse_qkv_projections()
            log.info("QKV projections unfused: LoRAs patch to_q/to_k/to_v")
        if self.on_change:
            self.on_change()  # injection changes the modules (and PEFT may unmerge a merged set)
        try:
            parts = load_lora_into(pipe, source, adapter)
        except Exception as error:
            self._drop(pipe, adapter)
            raise ModelLoadError(f"LoRA “{name}” could not be loaded: {_first_line(error)} "
                                 "It may be made for another base model (SD 1.x, 2.x and SDXL LoRAs differ).") from error
        finally:
            if self.on_change:
                self.on_change()
        slot = LoraSlot(name, adapter, source, lora_hash(source), parts)
        if self.extra_unet is not None and "unet" in parts and not self._load_unet_half(pipe, slot, self.extra_unet):
            self.extra_misses.add(name)
        self._mark(self._modules(pipe))
        self.slots[name] = slot
        while len(self.slots) > self.capacity:
            _, old = self.slots.popitem(last=False)
            self._drop(pipe, old.adapter)
            self.extra_misses.discard(old.name)
        return slot

    def attach_unet(self, pipe, unet) -> None:
        """A UNet used in place of the base's (the 9-channel inpainting UNet, trained from the
        same base): every loaded LoRA's UNet half goes into its matching layers, with the active
        set and weights; conv_in (9 input channels there, 4 in the base) is left out."""
        if unet is self.extra_unet:
            return
        with self._changing():
            fused = self.fused
            if fused is not None:
                self._unfuse(pipe)  # restores the old extra UNet's weights too, before it is let go
            self.extra_unet, self.extra_misses = unet, set()
            for slot in self.slots.values():
                if "unet" in slot.parts and not self._load_unet_half(pipe, slot, unet):
                    self.extra_misses.add(slot.name)
            self._mark([unet])
            self._enable(unet, list(self.active))
            if fused is not None:
                self._fuse(pipe, fused)

    def _load_unet_half(self, pipe, slot: LoraSlot, unet) -> bool:
        from diffusers.utils.peft_utils import delete_adapter_layers

        state, alphas = type(pipe).lora_state_dict(slot.source, unet_config=pipe.unet.config)
        keep = lambda key: not key.startswith(("unet.conv_in.", "conv_in."))  # noqa: E731
        state = {k: v for k, v in state.items() if keep(k)}
        alphas = {k: v for k, v in alphas.items() if keep(k)} if alphas else alphas
        if getattr(unet, "original_attn_processors", None) is not None and not self.fuse_always:
            unet.unfuse_qkv_projections()  # as for the base (get): LoRAs patch to_q/to_k/to_v
        try:
            with self._changing():
                type(pipe).load_lora_into_unet(state, alphas, unet=unet, adapter_name=slot.adapter, _pipeline=pipe)
            return True
        except Exception as error:  # another architecture: the LoRA then acts on the text encoders only
            if _has_adapter(unet, slot.adapter):
                delete_adapter_layers(unet, slot.adapter)
            log.warning("LoRA %s does not fit the extra UNet: %s", slot.name, _first_line(error))
            return False

    def _drop(self, pipe, adapter: str) -> None:
        from diffusers.utils.peft_utils import delete_adapter_layers

        for module in self._modules(pipe):
            if _has_adapter(module, adapter):
                delete_adapter_layers(module, adapter)

    def activate(self, pipe, weighted: list[tuple[LoraSlot, float]], device: torch.device) -> None:
        """Make exactly these adapters (with these weights) act; none → adapter layers off."""
        key = tuple((slot.adapter, weight) for slot, weight in weighted)
        self._repeats = self._repeats + 1 if key == self.active else 1
        if self.fused == key or not (key or self.slots):
            self.active = key
            return  # nothing changes: this set is merged already, or no LoRA was ever loaded
        if self.on_change:
            self.on_change()
        try:
            self._switch(pipe, key, weighted, device)
        finally:
            if self.on_change:
                self.on_change()

    def _switch(self, pipe, key, weighted, device) -> None:
        if self.fused is not None and self.fused != key:
            self._unfuse(pipe)
        self.active = key
        for module in self._modules(pipe):
            self._enable(module, list(key))
        if key and (self.fuse_always or (device.type == "cuda" and self._repeats >= FUSE_AFTER)):
            self._fuse(pipe, key)

    @staticmethod
    def _enable(module, key: list[tuple[str, float]]) -> None:
        """Exactly these (adapter, weight) pairs act in module; none → its adapter layers off."""
        from diffusers.utils.peft_utils import set_adapter_layers, set_weights_and_activate_adapters

        present = [(adapter, w) for adapter, w in key if _has_adapter(module, adapter)]
        if not present:
            if any(True for _ in _tuner_layers(module)):
                set_adapter_layers(module, enabled=False)
            return
        set_adapter_layers(module, enabled=True)
        set_weights_and_activate_adapters(module, [a for a, _ in present], [w for _, w in present])

    def _fuse(self, pipe, key) -> None:
        """Merge the active adapters into the base weights in place (the touched weights backed
        up on the host first): merged layers run base_layer(x) only, at base speed, and
        compiled code / CUDA graphs that read those weights see the new values."""
        for module in self._modules(pipe):
            for layer in _tuner_layers(module):
                if any(a in layer.lora_A for a, _ in key):
                    base = layer.get_base_layer()
                    self._backup[id(base)] = base.weight.detach().to("cpu", copy=True)
                    layer.merge(adapter_names=[a for a, _ in key if a in layer.lora_A])
        _refresh_fused_qkv(self._modules(pipe))
        self.fused = key
        log.info("fused LoRA set %s", key)

    def _unfuse(self, pipe) -> None:
        for module in self._modules(pipe):
            for layer in _tuner_layers(module):
                base = layer.get_base_layer()
                if id(base) in self._backup:
                    base.weight.data.copy_(self._backup.pop(id(base)))
                    layer.merged_adapters.clear()
        self._backup.clear()
        _refresh_fused_qkv(self._modules(pipe))
        self.fused = None

    def count_bytes(self, pipe) -> int:
        seen, total = set(), 0
        for module in self._modules(pipe):
            for name, p in module.named_parameters():
                if "lora_" in name and p.data_ptr() not in seen:
                    seen.add(p.data_ptr())
                    total += p.numel() * p.element_size()
        return total


@torch.no_grad()
def _refresh_fused_qkv(modules) -> None:
    """Fused attention projections (the fast path's to_qkv / to_kv) copied again, in place,
    from the to_q/to_k/to_v weights a LoRA merge or restore just changed: graphs and compiled
    code keep reading the same storage."""
    for module in modules:
        for attn in module.modules():
            if not getattr(attn, "fused_projections", False):
                continue
            if getattr(attn, "to_qkv", None) is not None and not attn.is_cross_attention:
                attn.to_qkv.weight.copy_(torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]))
            elif getattr(attn, "to_kv", None) is not None:
                attn.to_kv.weight.copy_(torch.cat([attn.to_k.weight, attn.to_v.weight]))


def _tuner_layers(module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def _first_line(error: Exception) -> str:
    if "size mismatch" in str(error) or "not found in the base model" in str(error):
        return "its layers do not have the shapes of this model's layers."  # torch's text names classes
    text = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable file"
    text = re.sub(r"(/[^\s'\"]+)+", "…", text)  # never show server paths
    return text[:200].rstrip(".") + "."


# ----------------------------------------------------------------------------- VAE
def load_vae(source: str, base_vae, device: torch.device, dtype: torch.dtype):
    """A VAE for the loaded architecture: a diffusers folder (its own config), or a single
    file in A1111's LDM layout or diffusers' (built on the base's VAE config, as A1111 uses
    the checkpoint's latent scale)."""
    from diffusers import AutoencoderKL

    path = Path(source)
    if path.is_dir():
        sub = {"subfolder": "vae"} if (path / "vae" / "config.json").is_file() else {}
        vae = AutoencoderKL.from_pretrained(path, torch_dtype=dtype, local_files_only=True, **sub)
    else:
        state = _read_weights(path)
        state = {k.removeprefix("first_stage_model."): v for k, v in state.items()
                 if not k.startswith(("model.", "cond_stage_model.", "model_ema."))}
        if any(k.startswith(("encoder.down.", "decoder.up.")) for k in state):  # LDM layout
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            state = convert_ldm_vae_checkpoint(state, dict(base_vae.config))
        vae = AutoencoderKL.from_config(base_vae.config)
        missing, unexpected = vae.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{len(missing)} weights missing and {len(unexpected)} unexpected for this model's VAE")
    if vae.config.latent_channels != base_vae.config.latent_channels:
        raise ValueError(f"it has {vae.config.latent_channels} latent channels, the model {base_vae.config.latent_channels}")
    return vae.to(device=device, dtype=dtype).eval()


def _read_weights(path: Path) -> dict:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    data = torch.load(str(path), map_location="cpu", weights_only=True)
    return data.get("state_dict", data) if isinstance(data, dict) else {}


# ----------------------------------------------------------------------------- embeddings
@dataclass
class EmbeddingReport:
    loaded: dict[str, str] = field(default_factory=dict)  # word → short hash
    failed: dict[str, str] = field(default_factory=dict)  # word → why

    def words_in(self, *texts: str, failed: bool = False) -> list[str]:
        words = self.failed if failed else self.loaded
        return [w for w in words if any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", t) for t in texts)]


XL_EMBEDDING_KEYS = ("clip_l", "clip_g")  # SDXL embeddings: one vector set per text encoder


def _embedding_tensors(path: str) -> dict:
    try:
        return _read_weights(Path(path))
    except Exception:  # not readable as tensors here: diffusers' own reader reports it
        return {}


def _load_xl_embedding(pipe, word: str, tensors: dict) -> None:
    """An SDXL embedding's clip_l vectors into CLIP ViT-L and its clip_g vectors into OpenCLIP
    bigG, both under the same word, so both encoders read the word as the embedding."""
    pairs = [(tensors["clip_l"], pipe.tokenizer, pipe.text_encoder),
             (tensors["clip_g"], pipe.tokenizer_2, pipe.text_encoder_2)]
    widths = [e.get_input_embeddings().weight.shape[1] for _, _, e in pairs]
    got = [t.shape[-1] for t, _, _ in pairs]
    if got != widths:  # checked first: half an embedding in one encoder would be worse than none
        raise ValueError(f"its vectors are {got[0]} and {got[1]} wide, this model's encoders take {widths[0]} and {widths[1]}.")
    for vectors, tokenizer, encoder in pairs:
        pipe.load_textual_inversion(vectors.reshape(-1, vectors.shape[-1]), token=word, tokenizer=tokenizer,
                                    text_encoder=encoder)


def load_embedding(pipe, word: str, source: str) -> None:
    """One embedding file into the pipeline's tokenizer(s) and text encoder(s): an SDXL model
    takes SDXL embeddings (clip_l + clip_g), SD 1.x/2.x ones take the one-encoder formats."""
    tensors = _embedding_tensors(source)
    xl_file = all(k in tensors for k in XL_EMBEDDING_KEYS)
    xl_model = getattr(pipe, "text_encoder_2", None) is not None
    if xl_file and xl_model:
        _load_xl_embedding(pipe, word, tensors)
    elif xl_file:
        raise ValueError("it is made for SDXL (clip_l + clip_g vectors); the loaded model is SD 1.x or 2.x.")
    elif xl_model:
        raise ValueError("it is made for SD 1.x or 2.x (one text encoder); an SDXL embedding holds clip_l and clip_g vectors.")
    else:
        pipe.load_textual_inversion(source, token=word)


def load_embeddings(pipe, report: EmbeddingReport) -> EmbeddingReport:
    """Every catalogue embedding not loaded yet, with its file stem as the word."""
    for word in catalog.names("embedding"):
        if word in report.loaded:
            continue
        source = catalog.resolve("embedding", word)
        try:
            load_embedding(pipe, word, source)
            report.loaded[word] = model_hash(source, 12)
            report.failed.pop(word, None)
        except Exception as error:
            report.failed[word] = _first_line(error)
    return report


# ----------------------------------------------------------------------------- per manager
class Adapters:
    """LoRAs, VAEs and embeddings of one manager's base pipeline."""

    def __init__(self, device: torch.device, dtype: torch.dtype, max_loras: int = 8, max_vaes: int = 2,
                 fuse_always: bool = False):
        self.device, self.dtype = device, dtype
        self.loras = LoraSet(max_loras, fuse_always)
        self.max_vaes = max_vaes
        self.vaes: OrderedDict[str, object] = OrderedDict()
        self.embeddings = EmbeddingReport()

    def reset(self) -> None:
        """A new base model: nothing loaded into the old one carries over."""
        self.loras = LoraSet(self.loras.capacity, self.loras.fuse_always)
        self.vaes.clear()
        self.embeddings = EmbeddingReport()

    def attach(self, base) -> None:
        """At model load and after a Refresh: load new embeddings from the catalogue."""
        self._generation = catalog.current().generation
        load_embeddings(base, self.embeddings)

    def vae(self, name: str, base):
        if name in self.vaes:
            self.vaes.move_to_end(name)
            return self.vaes[name]
        source = catalog.resolve("vae", name)
        if source is None:
            known = ", ".join([AUTOMATIC_VAE] + catalog.names("vae")[:12])
            raise RequestError(f"Unknown VAE “{name}”. Choose one of: {known}.")
        try:
            vae = load_vae(source, base.vae, self.device, self.dtype)
        except Exception as error:
            raise ModelLoadError(f"VAE “{name}” could not be loaded: {_first_line(error)}") from error
        self.vaes[name] = vae
        while len(self.vaes) > self.max_vaes:
            self.vaes.popitem(last=False)
        return vae

    @contextmanager
    def applied(self, base, pipelines: dict, request):
        """The request's LoRA set and VAE in the shared modules while it runs; afterwards the
        model's own VAE is back in every pipeline (the LoRA set stays until the next request
        sets its own, which costs nothing when it is the same)."""
        if getattr(self, "_generation", None) != catalog.current().generation:
            self.attach(base)  # the catalogue was rescanned (Refresh): new embeddings become words
        tags = [t for t in request.loras if t.weight != 0.0]
        if tags and getattr(base.unet, "_sd_studio_fp8", None):
            # The UNet's linears hold fp8 weights: merging a LoRA would mean re-quantizing from
            # a kept fp16 copy at every change of set (docs/performance.md#fp8), so: refused.
            raise RequestError("LoRAs can't be used on this server: it runs the model's UNet in fp8 "
                               "(started with --fp8). Remove the <lora:…> tags, or restart it without --fp8.")
        if len(tags) > MAX_LORAS_PER_REQUEST:
            raise RequestError(f"At most {MAX_LORAS_PER_REQUEST} LoRAs per request, got {len(tags)}.")
        weighted = [(self.loras.get(base, t.name), t.weight) for t in tags]
        own_vae = base.vae
        vae_name = getattr(request, "vae", AUTOMATIC_VAE) or AUTOMATIC_VAE
        vae = own_vae if vae_name == AUTOMATIC_VAE else self.vae(vae_name, base)
        self.loras.activate(base, weighted, self.device)
        for pipe in [base, *pipelines.values()]:
            pipe.vae = vae
        try:
            yield
        finally:
            for pipe in [base, *pipelines.values()]:
                pipe.vae = own_vae

    def infotext(self, request) -> dict:
        """A1111's keys: Lora hashes "name: hash12, …", TI hashes, VAE (+ VAE hash)."""
        params = {}
        tags = [t for t in request.loras]
        if tags:
            params["Lora hashes"] = ", ".join(
                f"{t.name}: {self.loras.slots[t.name].hash if t.name in self.loras.slots else lora_hash(catalog.resolve('lora', t.name) or '')}"
                for t in tags)
        words = self.embeddings.words_in(request.prompt, request.negative_prompt)
        if words:
            params["TI hashes"] = ", ".join(f"{w}: {self.embeddings.loaded[w]}" for w in words)
        vae_name = getattr(request, "vae", AUTOMATIC_VAE) or AUTOMATIC_VAE
        if vae_name != AUTOMATIC_VAE:
            params["VAE hash"] = model_hash(catalog.resolve("vae", vae_name) or "", 10)  # "VAE" itself: the declared field
        return params

    def notes(self, request) -> list[str]:
        """Embedding words in the prompts whose file could not be loaded: the word is then plain
        text, and the user should know why (e.g. an SD 1.5 embedding on SDXL)."""
        words = self.embeddings.words_in(request.prompt, request.negative_prompt, failed=True)
        return [f"Embedding “{w}” was not used: {self.embeddings.failed[w]}" for w in words]

    def memory(self, base) -> dict:
        vae_bytes = sum(p.numel() * p.element_size() for v in self.vaes.values() for p in v.parameters())
        return {"lora_bytes": self.loras.count_bytes(base) if base is not None else 0, "vae_bytes": vae_bytes,
                "loras": list(self.loras.slots), "vaes": list(self.vaes), "fused": self.loras.fused is not None,
                "embeddings_loaded": list(self.embeddings.loaded), "embeddings_failed": dict(self.embeddings.failed)}
