"""Hugging Face protein LMs: ESM/ESM-2, ProtBert, ALBERT, ProtT5 encoder, XLNet, protlm's causal LMs.

Family conventions (tokenisation, special tokens, rare residues, position limits) come from
:mod:`protlm.models.families`; weights are loaded by :func:`protlm.models.hf.load_hf_lm`
(safetensors only). Attention is PyTorch SDPA (memory-efficient kernels), so a
35,000-residue protein fits in a few GB on a CPU.
"""

from __future__ import annotations

import numpy as np

from protlm.embed.backend import Backend, folder_weights_sha256
from protlm.embed.registry import register
from protlm.embed.spec import EmbedOptions
from protlm.errors import ConfigError
from protlm.models.families import FAMILIES
from protlm.models.hf import RANDOM_PREFIX, LoadedLM, load_hf_lm

TORCH_DTYPES = ("fp32", "bf16", "fp16")


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None


class HFBackend(Backend):
    equal_length_on_cpu = True

    def __init__(self, source: str, options: EmbedOptions, *, family=None, model_class=None):
        import torch

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[options.dtype]
        device = resolve_device(options.device)
        if dtype != torch.float32 and device.type == "cpu":
            raise ConfigError(f"--dtype {options.dtype} is meant for GPUs; on a CPU use fp32 (or --int8)")
        if options.int8 and device.type != "cpu":
            raise ConfigError("--int8 (dynamic quantisation) runs on the CPU; use --dtype bf16/fp16 on GPUs")
        self.lm: LoadedLM = load_hf_lm(source, dtype=dtype, seed=options.seed, family=family,
                                       model_class=model_class)
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
            raise ConfigError(f"--layer {options.layer}: the model has {n_layers} layers "
                              f"(valid: {-n_layers - 1} … {n_layers}; 0 is the embedding layer, -1 the last)")
        model = self.lm.model
        if options.int8:
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model.to(device)
        self.device = str(device)
        self._cpu_model = self.model if device.type == "cpu" else None

    def _cpu(self):
        if self._cpu_model is None:
            import copy

            self._cpu_model = copy.deepcopy(self.model).float().to("cpu")
        return self._cpu_model

    def encode_batch(self, seqs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (right-padded with the pad id) and the attention mask of a batch."""
        encoded = [self.layout.encode(s) for s in seqs]
        width = max(len(e) for e in encoded)
        ids = np.full((len(encoded), width), self.layout.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, e in enumerate(encoded):
            ids[row, :len(e)] = e
            mask[row, :len(e)] = 1
        return ids, mask

    def forward(self, seqs: list[str], *, cpu: bool = False) -> list[np.ndarray]:
        import torch

        model = self._cpu() if cpu else self.model
        device = torch.device("cpu") if cpu else torch.device(self.device)
        ids, mask = self.encode_batch(seqs)
        ids_t = torch.from_numpy(ids).to(device)
        # Without padding no mask is needed, and SDPA can take its fastest path.
        mask_t = None if mask.all() else torch.from_numpy(mask).to(device)
        want_all = self.options.layer != -1
        with torch.inference_mode():
            out = model(input_ids=ids_t, attention_mask=mask_t, output_hidden_states=want_all)
            hidden = out.hidden_states[self.options.layer] if want_all else out.last_hidden_state
            hidden = hidden.float().cpu().numpy()
        start = len(self.layout.prefix)
        return [hidden[row, start:start + len(s)].copy() for row, s in enumerate(seqs)]

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
                "dtype": "int8-dynamic" if self.options.int8 else self.options.dtype}

    def fingerprint(self) -> str:
        from pathlib import Path

        if self.lm.name.startswith(RANDOM_PREFIX):
            weights = f"{RANDOM_PREFIX}seed={self.options.seed}:{folder_weights_sha256(self.lm.source)}"
        else:
            weights = folder_weights_sha256(self.source) if Path(self.source).is_dir() else self.source
        precision = "int8" if self.options.int8 else self.options.dtype
        return f"{self.family}:{weights}|layer={self.options.layer}|{precision}"


@register(model_types=tuple(FAMILIES) + ("__hub__",), help="a Hugging Face protein LM folder or hub id")
def _hf(source: str, options: EmbedOptions) -> Backend:
    return HFBackend(source, options)


@register(prefix=RANDOM_PREFIX, help="random-init:FOLDER — FOLDER's architecture with random weights (seed option)")
def _random_init(source: str, options: EmbedOptions) -> Backend:
    return HFBackend(RANDOM_PREFIX + source, options)
