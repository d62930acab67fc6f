"""ProtTXL (protlm's Transformer-XL, ``model_type: prottxl``): embedded segment by segment with memory.

A batch is walked in segments of the model's ``segment_length`` tokens; each layer keeps the
last ``mem_len`` hidden states it saw (no gradient, nothing else), so a protein of any length
embeds in memory bounded by ``batch × (segment_length + mem_len)`` — there is no position limit
and no windowing. The numbers are exactly those of one forward over the whole protein with the
same config (the model applies the same recurrence in training; tests check the parity).

Text conventions are ProtBert's (the family's vocabulary): ``[CLS] residues [SEP]``, rare residues
U Z O B read as X, as ProtTrans does; the residue → id table is learnt from the saved tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protlm.embed.backend import Backend, folder_weights_sha256
from protlm.embed.registry import register
from protlm.embed.spec import EmbedOptions
from protlm.errors import ConfigError, InputError
from protlm.models.families import Family, token_layout

FAMILY = Family("prottxl", "prottxl", "ProtTXLModel", space_separated=True, map_rare=True)


class ProtTXLBackend(Backend):
    family = "prottxl"
    model_type = "prottxl"
    equal_length_on_cpu = True

    def __init__(self, source: str, options: EmbedOptions):
        import torch
        import transformers

        from protlm.embed.backends.hf import resolve_device
        from protlm.models.hf import _quiet_transformers, check_safetensors
        from protlm.models.transfo_xl import ProtTXLModel

        _quiet_transformers()
        check_safetensors(source)
        device = resolve_device(options.device)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[options.dtype]
        if dtype != torch.float32 and device.type == "cpu":
            raise ConfigError(f"--dtype {options.dtype} is meant for GPUs; on a CPU use fp32 (or --int8)")
        if options.int8 and device.type != "cpu":
            raise ConfigError("--int8 (dynamic quantisation) runs on the CPU; use --dtype bf16/fp16 on GPUs")
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        except Exception as exc:
            raise InputError(f"--model {source}: the tokenizer could not be loaded ({type(exc).__name__})") from None
        self.layout = token_layout(tokenizer, FAMILY)
        try:
            model = ProtTXLModel.from_pretrained(source, dtype=dtype, use_safetensors=True)
        except Exception as exc:
            raise InputError(f"--model {source}: the weights could not be loaded ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
        model.eval()
        n_layers = model.config.n_layer
        if not (-n_layers - 1 <= options.layer <= n_layers):
            raise ConfigError(f"--layer {options.layer}: the model has {n_layers} layers "
                              f"(valid: {-n_layers - 1} … {n_layers}; 0 is the embedding layer, -1 the last)")
        if options.int8:
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model.to(device)
        self.config = model.config
        self.source = source
        self.options = options
        self.device = str(device)
        self.dim = model.config.d_model
        self.extra_tokens = len(self.layout.prefix) + len(self.layout.suffix)
        self.max_residues = None  # segment recurrence: any length, bounded memory
        self._cpu_model = self.model if device.type == "cpu" else None

    def _cpu(self):
        if self._cpu_model is None:
            import copy

            self._cpu_model = copy.deepcopy(self.model).float().to("cpu")
        return self._cpu_model

    def hidden(self, ids, model) -> "object":
        """The requested layer for a right-padded id batch, walked segment by segment."""
        import torch

        seg = model.config.segment_length
        want_all = self.options.layer != -1
        mems = None
        pieces = []
        with torch.inference_mode():
            for start in range(0, ids.shape[1], seg):
                out = model(input_ids=ids[:, start:start + seg], mems=mems, use_mems=True,
                            output_hidden_states=want_all)
                mems = out.mems
                h = out.hidden_states[self.options.layer] if want_all else out.last_hidden_state
                pieces.append(h.float().cpu())
        return torch.cat(pieces, dim=1)

    def forward(self, seqs: list[str], *, cpu: bool = False) -> list[np.ndarray]:
        import torch

        model = self._cpu() if cpu else self.model
        device = torch.device("cpu") if cpu else torch.device(self.device)
        encoded = [self.layout.encode(s) for s in seqs]
        width = max(len(e) for e in encoded)
        ids = np.full((len(encoded), width), self.layout.pad_id, dtype=np.int64)
        for row, e in enumerate(encoded):
            ids[row, :len(e)] = e  # right padding: a causal model's real tokens never see it
        hidden = self.hidden(torch.from_numpy(ids).to(device), model).numpy()
        start = len(self.layout.prefix)
        return [hidden[row, start:start + len(s)].copy() for row, s in enumerate(seqs)]

    def describe(self) -> dict:
        return {**super().describe(), "layer": self.options.layer,
                "dtype": "int8-dynamic" if self.options.int8 else self.options.dtype,
                "segment_length": self.config.segment_length, "mem_len": self.config.mem_len}

    def fingerprint(self) -> str:
        weights = folder_weights_sha256(self.source) if Path(self.source).is_dir() else self.source
        precision = "int8" if self.options.int8 else self.options.dtype
        return f"{self.family}:{weights}|layer={self.options.layer}|{precision}"


@register(model_types=("prottxl",), help="a ProtTXL (Transformer-XL) folder, embedded segment by segment with memory")
def _prottxl(source: str, options: EmbedOptions) -> Backend:
    return ProtTXLBackend(source, options)
