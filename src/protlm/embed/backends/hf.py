"""Hugging Face protein LMs: ESM/ESM-2, ProtBert, ALBERT, ProtT5 encoder, XLNet, protlm's causal LMs.

Family conventions (tokenisation, special tokens, rare residues, position limits) come from
:mod:`protlm.models.families`; weights are loaded by :func:`protlm.models.hf.load_hf_lm`
(safetensors only). Attention is PyTorch SDPA (memory-efficient kernels), so a
35,000-residue protein fits in a few GB on a CPU.

On a CPU, ESM and BERT-like encoders run the runner's batches **packed**
(:mod:`protlm.embed.packed`): proteins of mixed lengths concatenated along the token axis, the
dense layers on all their tokens at once, attention protein by protein — no padding, and no
equal-length constraint. Measured at one thread on Swiss-Prot proteins it was faster than the
equal-length plan it replaces in every round, by little in fp32 (1.02–1.08×) and more under bf16
and on short proteins (up to 1.34×): docs/benchmarks.md, "Packed variable-length batches". The
padded ``forward_tokens`` stays for everything else: GPUs,
``--int8``, attention maps, a module in training mode or wrapped by peft (fine-tuning), the other
families, and an explicit ``equal_length_batches`` choice (``true`` gives the earlier equal-length
plan, ``false`` padded mixed batches).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from protlm.embed.backend import Backend, LMOutput, TorchBackend, folder_weights_sha256, residue_positions
from protlm.embed.precision import quantize_int8, resolve_dtype
from protlm.embed.registry import register
from protlm.embed.spec import EmbedOptions
from protlm.errors import ConfigError, InputError
from protlm.io.resources import model_source
from protlm.models.families import FAMILIES
from protlm.models.hf import RANDOM_PREFIX, LoadedLM, load_hf_lm

TORCH_DTYPES = ("fp32", "bf16", "fp16")


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{name}: no CUDA device is available here", option="device")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{name!r}: expected auto, cpu, cuda or cuda:N", option="device") from None


#: LoRA's default targets per family (``lora_target_modules: auto``): the attention projections
#: and the attention output, as in biotrainer and Schmirler et al. 2024 (query/key/value/dense for
#: ESM and BERT-like models, q/k/v/o for T5). XLNet keeps its attention in raw parameters (not
#: ``nn.Linear``), so its feed-forward layers are adapted instead.
LORA_AUTO = {
    "esm": ["query", "key", "value", "attention.output.dense"],
    "bert": ["query", "key", "value", "attention.output.dense"],
    "albert": ["query", "key", "value", "attention.dense"],
    "t5": ["q", "k", "v", "o"],
    "gpt_neox": ["query_key_value", "attention.dense"],
    "xlnet": ["layer_1", "layer_2"],
}


def find_blocks(model, n_layers: int) -> list:
    """The model's repeated layers, input side first: the first ``nn.ModuleList`` of ``n_layers``
    modules (``encoder.layer`` for ESM/BERT, ``encoder.block`` for T5, ``layer`` for XLNet, …)."""
    import torch

    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n_layers and n_layers > 0:
            return list(mod)
    return []


class HFBackend(TorchBackend):
    equal_length_on_cpu = True

    def __init__(self, source: str, options: EmbedOptions, *, family=None, model_class=None, attention: str = "sdpa"):
        import torch

        device = resolve_device(options.device)
        if options.int8 and device.type != "cpu":
            raise ConfigError("dynamic int8 quantisation runs on the CPU; use dtype bf16/fp16 on GPUs", option="int8")
        # --dtype auto resolved here; describe() and fingerprint() record what actually ran
        options = replace(options, dtype=resolve_dtype(options.dtype, device, int8=options.int8))
        # bf16 on a CPU: the fp32 model under bf16 autocast (as fast as casting the weights, closer to
        # fp32: layer norms and softmax stay fp32; docs/benchmarks.md "CPU precision"). GPUs: cast.
        self.cpu_autocast = device.type == "cpu" and options.dtype == "bf16"
        dtype = torch.float32 if self.cpu_autocast else {"fp32": torch.float32, "bf16": torch.bfloat16,
                                                          "fp16": torch.float16}[options.dtype]
        # attention "eager" returns attention maps (forward_tokens(attentions=True)); SDPA is faster
        self.lm: LoadedLM = load_hf_lm(source, dtype=dtype, seed=options.seed, family=family,
                                       model_class=model_class, attention=attention)
        self.source = source
        self.options = options
        self.config = self.lm.config
        self.family_info = self.lm.family
        self.family = self.lm.family.name
        self.model_type = self.lm.family.model_type
        self.tokenizer = self.lm.tokenizer
        self.layout = self.lm.layout
        self.extra_tokens = len(self.layout.prefix) + len(self.layout.suffix)
        self.max_residues = self.lm.family.max_residues
        self.dim = self.lm.width
        n_layers = self.lm.layers
        if not (-n_layers - 1 <= options.layer <= n_layers):
            raise ConfigError(f"{options.layer}: the model has {n_layers} layers (valid: {-n_layers - 1} … "
                              f"{n_layers}; 0 is the embedding layer, -1 the last)", option="layer")
        model = self.lm.model
        if options.int8:
            model = quantize_int8(model)
        self.model = model.to(device)
        self.device = str(device)
        self._cpu_model = self.model if device.type == "cpu" else None
        self.layer = options.layer
        #: the packed forward's attention schedule (protlm.embed.packed.ATTENTION; benchmarks compare them)
        self.packed_attention = "segments"
        self._compiled = None
        self._lm_head = self._lm_head_cpu = None  # loaded when logits are first asked for (forward_tokens)
        self._update_packing()
        if options.compile:
            from protlm.embed.packed import CompiledESM, compile_support

            why = self.packing_unavailable or compile_support(self.model)
            if why is not None:
                raise ConfigError(f"--compile needs the packed CPU forward of an ESM-family model: {why}",
                                  option="compile")
            self._compiled = CompiledESM(self.model, "bf16" if self.cpu_autocast else "fp32")
            try:
                self._compiled.warm_up()
            except Exception as exc:  # inductor's own errors (a missing compiler, headers, …)
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                raise ConfigError(f"torch.compile could not build its kernels on this machine "
                                  f"({type(exc).__name__}: {first}); run without --compile",
                                  option="compile") from None

    def _update_packing(self) -> None:
        """Whether ``forward`` packs its batches (``packed_batches``) and, if not, why (``packing_unavailable``)."""
        from protlm.embed.packed import packing_support

        if self.device != "cpu":
            why = f"packed batches are a CPU path (device {self.device})"
        elif self.options.int8:
            why = "--int8 keeps padded batches"
        elif self.options.equal_length_batches is not None:
            why = "equal_length_batches was chosen explicitly"
        else:
            why = packing_support(self.model)
        self.packing_unavailable = why
        self.packed_batches = why is None

    @property
    def layers(self) -> int:
        return self.lm.layers

    @property
    def heads(self) -> int:
        return self.lm.heads

    @property
    def n_maps(self) -> int:
        return self.lm.n_maps

    @property
    def module(self):  # type: ignore[override]
        return self.model

    @module.setter
    def module(self, value) -> None:  # fine-tuning replaces it with its peft wrapper
        self.model = value
        if self.device == "cpu":
            self._cpu_model = value
        self._update_packing()  # a peft wrapper is not packed
        self._compiled = None  # nor compiled: its weights are copies of the unwrapped module's

    def _cpu(self):
        if self._cpu_model is None:
            import copy

            self._cpu_model = copy.deepcopy(self.model).float().to("cpu")
        return self._cpu_model

    def encode(self, seqs: list[str]) -> list[np.ndarray]:
        """Token ids of each protein, special tokens included; a character without a token is refused."""
        encoded = []
        for s in seqs:
            try:
                e = self.layout.encode(s)
            except UnicodeEncodeError:
                e = None
            if e is None or (e < 0).any():
                bad = sorted({c for c in s if not c.isascii() or self.layout.lut[ord(c)] < 0})
                raise InputError(f"{self.source}: a sequence holds characters the model has no token for: "
                                 f"{''.join(bad)!r} (the API takes cleaned sequences: upper case, the 20 residues, "
                                 f"X, B/Z/U/O; protlm.data.alphabet cleans them, as the CLI does)")
            encoded.append(e)
        return encoded

    def encode_batch(self, seqs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (right-padded with the pad id) and the attention mask of a batch."""
        encoded = self.encode(seqs)
        width = max(len(e) for e in encoded)
        ids = np.full((len(encoded), width), self.layout.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, e in enumerate(encoded):
            ids[row, :len(e)] = e
            mask[row, :len(e)] = 1
        return ids, mask

    def forward_tokens(self, seqs, *, layers=(-1,), attentions=False, logits=False, cpu=False) -> LMOutput:
        import torch

        head = self._head(cpu) if logits else None
        model = self._cpu() if cpu else self.model
        device = torch.device("cpu") if cpu else torch.device(self.device)
        ids, mask = self.encode_batch(seqs)
        ids_t = torch.from_numpy(ids).to(device)
        # Without padding no mask is needed, and SDPA can take its fastest path.
        mask_t = None if mask.all() else torch.from_numpy(mask).to(device)
        want_all = any(layer != -1 for layer in layers)
        kwargs = {"output_attentions": True} if attentions else {}
        autocast = self.cpu_autocast and device.type == "cpu"
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids=ids_t, attention_mask=mask_t, output_hidden_states=want_all, **kwargs)
        starts, lengths = [len(self.layout.prefix)] * len(seqs), [len(s) for s in seqs]
        hidden, res_mask = {}, None
        for layer in layers:
            h = out.hidden_states[layer] if layer != -1 else out.last_hidden_state
            hidden[layer], res_mask = residue_positions(h.float() if autocast else h, starts, lengths)
        maps = None
        if attentions:
            if not out.attentions or any(a is None for a in out.attentions):
                raise ConfigError(f"{self.family}: this model's attention kernel returns no attention maps; load it "
                                  f"with eager attention")
            # B × (layers·heads) × T × T
            stack = torch.cat([a.float() if autocast else a for a in out.attentions], dim=1)
            s0, L = starts[0], max(lengths)
            maps = stack[:, :, s0:s0 + L, s0:s0 + L]
        scores = None
        if head is not None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                lg = head(out.last_hidden_state)
            scores = residue_positions(lg.float() if autocast else lg, starts, lengths)[0]
        return LMOutput(hidden=hidden, mask=res_mask, attentions=maps, logits=scores)

    def _head(self, cpu: bool = False):
        """The folder's LM head (loaded on first use): ``forward_tokens(logits=True)`` applies it to
        the last hidden state. Fine-tuning does not train it (the head of the base model)."""
        import torch

        if self._lm_head is None:
            from protlm.models.hf import load_lm_head

            dtype = self.model.dtype if not self.options.int8 else torch.float32
            self._lm_head = load_lm_head(self.lm.name, self.lm.family, dtype=dtype, seed=self.options.seed)
            self._lm_head.requires_grad_(False)
            self._lm_head.to(self.device)
        if cpu and self.device != "cpu":  # the CPU fallback's copy, as _cpu() keeps one of the model
            if self._lm_head_cpu is None:
                import copy

                self._lm_head_cpu = copy.deepcopy(self._lm_head).float().to("cpu")
            return self._lm_head_cpu
        return self._lm_head

    # ------------------------------------------------------------------ packed batches (CPU inference)

    def forward(self, seqs: list[str], *, cpu: bool = False) -> list[np.ndarray]:
        if not self.packed_batches or self.model.training:
            return super().forward(seqs, cpu=cpu)
        import torch

        with torch.inference_mode():
            packed, hidden = self._packed(seqs, (self.layer,))
            h = hidden[self.layer].float().numpy()
        first = len(self.layout.prefix)
        return [h[c + first:c + first + len(s)].copy() for c, s in zip(packed.cu_seqlens, seqs)]

    def forward_packed(self, seqs, *, layers=(-1,), cpu=False) -> LMOutput:
        """``forward_tokens`` for inference, packed (no padding computed): the same LMOutput of
        the asked layers' hidden states (no attention maps, no logits). The padded twin is the
        reference the tests hold it to (1e-5 in fp32). ``cpu`` is accepted for symmetry: packing
        runs on the CPU only."""
        if not self.packed_batches:
            raise ConfigError(f"{self.family}: no packed forward here ({self.packing_unavailable}); use forward_tokens")
        if self.model.training:
            raise ConfigError(f"{self.family}: the packed forward is for inference (it applies no attention "
                              f"dropout); training uses forward_tokens")
        packed, hidden = self._packed(seqs, layers)
        first = len(self.layout.prefix)
        starts = [c + first for c in packed.cu_seqlens[:-1]]
        lengths = [len(s) for s in seqs]
        out, mask = {}, None
        for layer in layers:
            h = hidden[layer].float()
            # one row seen B times (no copy): residue_positions takes row b's residues from it
            out[layer], mask = residue_positions(h.unsqueeze(0).expand(len(seqs), *h.shape), starts, lengths)
        return LMOutput(hidden=out, mask=mask)

    def _packed(self, seqs, layers):
        import torch

        from protlm.embed.packed import pack, packed_hidden

        packed = pack(self.encode(list(seqs)), device=self.device)
        if self._compiled is not None:
            return packed, self._compiled(packed, layers)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_autocast):
            hidden = packed_hidden(self.model, packed, layers, attention=self.packed_attention)
        return packed, hidden

    # ------------------------------------------------------------------ fine-tuning

    def blocks(self) -> list:
        if self.family == "albert":
            raise ConfigError("albert: ALBERT shares one set of weights between all its layers, so there are no "
                              "last k layers to unfreeze; use finetune.method full or lora")
        found = find_blocks(self.model, self.lm.layers)
        if not found:
            return super().blocks()
        return found

    def lora_targets(self) -> list[str]:
        return list(LORA_AUTO.get(self.lm.family.model_type, [])) or self._linear_names()

    def _linear_names(self) -> list[str]:
        import torch

        blocks = find_blocks(self.model, self.lm.layers)
        names = sorted({n.split(".")[-1] for b in blocks[:1] for n, m in b.named_modules()
                        if isinstance(m, torch.nn.Linear)})
        if not names:
            return super().lora_targets()
        return names

    def enable_checkpointing(self) -> None:
        model = self.lm.model
        if not getattr(model, "supports_gradient_checkpointing", False):
            super().enable_checkpointing()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def save_lm(self, folder) -> None:
        from pathlib import Path

        from protlm.models.folder import save_hf_model

        folder = Path(folder)
        save_hf_model(self.lm.model, folder)  # the canonical layout (no gamma/beta, per-layer inv_freq)
        self.tokenizer.save_pretrained(folder)

    def memory_bytes(self, length: int) -> int:
        # fp32 activations of one layer (hidden + feed-forward + attention projections; SDPA's CPU
        # and GPU kernels do not materialise L × L), the hidden states kept (all of them when a
        # layer other than the last is asked for), and the output copy; ×2 for allocator slack.
        c = self.config
        d = self.dim
        ffn = int(c.get("intermediate_size") or c.get("d_ff") or 4 * d)
        kept = (self.lm.layers + 1) if self.options.layer != -1 else 1
        return 2 * 4 * (length + self.extra_tokens) * (ffn + 6 * d + kept * d + d)

    def describe(self) -> dict:
        return {**super().describe(), "layer": self.options.layer,
                "dtype": "int8-dynamic" if self.options.int8 else self.options.dtype,
                "compiled": bool(self.options.compile)}

    def fingerprint(self) -> str:
        from pathlib import Path

        if self.lm.name.startswith(RANDOM_PREFIX):
            weights = f"{RANDOM_PREFIX}seed={self.options.seed}:{folder_weights_sha256(self.lm.source)}"
        else:
            weights = folder_weights_sha256(self.source) if Path(self.source).is_dir() else self.source
        precision = "int8" if self.options.int8 else self.options.dtype
        if self.options.compile:  # bf16 attention and fused kernels: not bit-equal to the eager path
            precision += "+compiled"
        return f"{self.family}:{weights}|layer={self.options.layer}|{precision}"


@register(model_types=tuple(FAMILIES) + ("__hub__",), help="a Hugging Face protein LM folder or hub id")
def _hf(source: str, options: EmbedOptions) -> Backend:
    return HFBackend(source, options)


@register(prefix=RANDOM_PREFIX, help="random-init:FOLDER — FOLDER's architecture with random weights (seed option)")
def _random_init(source: str, options: EmbedOptions) -> Backend:
    return HFBackend(RANDOM_PREFIX + model_source(source), options)
