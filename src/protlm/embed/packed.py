"""Packed variable-length batches: proteins of any lengths in one forward pass, without padding.

The proteins of a batch are concatenated along the token axis (N tokens in all, ``cu_seqlens``
marking where each one starts, as in FlashAttention's varlen API and esm.cpp's scheduler). Every
layer that acts on one token at a time — embeddings, layer norms, the q/k/v and output
projections, the feed-forward block — runs once on the N × D matrix; only attention is taken
protein by protein (:func:`segment_attention`), so no token attends across a protein's border and
no padding is computed. Positions restart at every protein: ESM's rotary angles and the absolute
position tables (ESM-1b, BERT) are indexed by the token's place in its own protein.

The forward reuses the loaded Hugging Face module's own submodules and weights (embedding tables,
layer norms, linear layers, the rotary table and ``apply_rotary_pos_emb``; ESM's exact erf gelu
is taken as ``F.gelu``, the same function in one kernel), so it computes what
``EsmModel`` / ``BertModel`` compute protein by protein — the tests hold it to 1e-5 in fp32 — and
only the batching differs. It is written for inference (the embedding runner); fine-tuning keeps
the padded :meth:`~protlm.embed.backends.hf.HFBackend.forward_tokens`.

Families: ESM/ESM-2 (``model_type`` "esm": pre-LN, rotary or absolute positions, token-dropout
rescaling, ``emb_layer_norm_before``/``emb_layer_norm_after``) and BERT-like absolute-position
encoders (``model_type`` "bert": post-LN, word + position + token-type embeddings).
:func:`packing_support` says why any other module is not packed; the caller then keeps the
padded path.

Attention per protein: one SDPA call per protein on its (heads × L × head-dim) slices. Three
other schedules were measured on this project's CPU (benchmarks/bench_packed.py
``--schedules``, docs/benchmarks.md "Packed variable-length batches"): grouping proteins of equal
length into one call (as fast: Swiss-Prot lengths hardly repeat), padding q/k/v to the longest
protein with a key mask (one call on the masked kernel: slower), and torch's jagged nested
tensors (torch 2.13 runs them on a CPU through a slow fallback). They stay here, selectable by
name (``HFBackend.packed_attention``), so the choice can be re-measured on other machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

#: ESM's token-dropout compensation: the fraction of tokens masked in pre-training (15 % × 80 %),
#: hard-coded in every ESM training run and in transformers' EsmEmbeddings.
ESM_MASK_RATIO_TRAIN = 0.15 * 0.8


@dataclass
class Packed:
    """One packed batch: ``tokens`` (N,) token ids of all proteins back to back; ``cu_seqlens``
    (B + 1,) the offsets where each protein's tokens start (the last entry is N); ``positions``
    (N,) each token's index within its own protein; ``segment`` (N,) each token's protein."""

    tokens: object
    cu_seqlens: list[int]
    positions: object
    segment: object

    @property
    def lengths(self) -> list[int]:
        c = self.cu_seqlens
        return [c[i + 1] - c[i] for i in range(len(c) - 1)]


def pack(encoded: Sequence, device=None) -> Packed:
    """Token-id arrays of B proteins (numpy, specials included) → one :class:`Packed` batch."""
    import numpy as np
    import torch

    lengths = [len(e) for e in encoded]
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = torch.from_numpy(np.concatenate(encoded).astype(np.int64))
    positions = torch.from_numpy(np.arange(int(cu[-1]), dtype=np.int64) - np.repeat(cu[:-1], lengths))
    segment = torch.from_numpy(np.repeat(np.arange(len(lengths), dtype=np.int64), lengths))
    if device is not None:
        tokens, positions, segment = tokens.to(device), positions.to(device), segment.to(device)
    return Packed(tokens=tokens, cu_seqlens=[int(c) for c in cu], positions=positions, segment=segment)


# ---------------------------------------------------------------------------------- attention

def segment_attention(q, k, v, cu_seqlens: Sequence[int], scale: float):
    """Attention of each protein to itself: q, k, v are N × heads × head-dim (all proteins'
    tokens back to back); returns N × heads × head-dim. One SDPA call per protein, on the
    heads × L × head-dim views of its rows (no mask, so SDPA keeps its unmasked kernel)."""
    import torch
    import torch.nn.functional as F

    out = torch.empty_like(q)
    for i in range(len(cu_seqlens) - 1):
        s, e = cu_seqlens[i], cu_seqlens[i + 1]
        if e == s:
            continue
        # 1 × heads × L × head-dim: the CPU's flash kernel takes only 4-D inputs (3-D ones fall
        # back to the unfused math path: bmm + softmax + masking, several times slower in the profile)
        o = F.scaled_dot_product_attention(*(t[s:e].transpose(0, 1)[None] for t in (q, k, v)), scale=scale)
        out[s:e] = o[0].transpose(0, 1)
    return out


def grouped_attention(q, k, v, cu_seqlens: Sequence[int], scale: float):
    """Like :func:`segment_attention`, but proteins of equal length share one SDPA call (a
    measured alternative; see the module docstring)."""
    import torch
    import torch.nn.functional as F

    groups: dict[int, list[int]] = {}
    for i in range(len(cu_seqlens) - 1):
        groups.setdefault(cu_seqlens[i + 1] - cu_seqlens[i], []).append(cu_seqlens[i])
    out = torch.empty_like(q)
    for length, starts in groups.items():
        if length == 0:
            continue
        if len(starts) == 1:
            s = starts[0]
            o = F.scaled_dot_product_attention(*(t[s:s + length].transpose(0, 1)[None] for t in (q, k, v)),
                                               scale=scale)
            out[s:s + length] = o[0].transpose(0, 1)
            continue
        idx = torch.cat([torch.arange(s, s + length, device=q.device) for s in starts])
        shape = (len(starts), length) + tuple(q.shape[1:])
        qs, ks, vs = (t.index_select(0, idx).view(shape).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=scale)
        out.index_copy_(0, idx, o.transpose(1, 2).reshape(-1, *q.shape[1:]))
    return out


def padded_attention(q, k, v, cu_seqlens: Sequence[int], scale: float):
    """Like :func:`segment_attention`, but q/k/v padded to the longest protein and one masked
    SDPA call (a measured alternative; see the module docstring)."""
    import torch
    import torch.nn.functional as F

    B = len(cu_seqlens) - 1
    lengths = [cu_seqlens[i + 1] - cu_seqlens[i] for i in range(B)]
    L = max(lengths)
    dev = q.device
    pos = torch.arange(L, device=dev)
    lens = torch.as_tensor(lengths, device=dev)
    valid = pos[None, :] < lens[:, None]  # B × L
    index = (torch.as_tensor(cu_seqlens[:-1], device=dev)[:, None] + pos[None, :])[valid]
    H, hd = q.shape[1], q.shape[2]

    def to_padded(t):
        p = t.new_zeros(B, L, H, hd)
        p[valid] = t
        return p.transpose(1, 2)

    mask = valid[:, None, None, :]  # keys only; padded query rows are dropped below
    o = F.scaled_dot_product_attention(to_padded(q), to_padded(k), to_padded(v), attn_mask=mask, scale=scale)
    out = torch.empty_like(q)
    out[index] = o.transpose(1, 2)[valid]
    return out


def nested_attention(q, k, v, cu_seqlens: Sequence[int], scale: float):
    """Like :func:`segment_attention`, through torch's jagged nested tensors (a measured
    alternative; see the module docstring)."""
    import warnings

    import torch
    import torch.nn.functional as F

    offsets = torch.as_tensor(list(cu_seqlens), device=q.device)

    def jagged(t):
        return torch.nested.nested_tensor_from_jagged(t, offsets).transpose(1, 2)

    with warnings.catch_warnings():
        # torch's CPU fallback for jagged SDPA builds a strided nested tensor internally and warns
        # that that layout is a prototype; the call itself is the supported jagged API
        warnings.filterwarnings("ignore", message=r"The PyTorch API of nested tensors is in prototype stage",
                                category=UserWarning)
        o = F.scaled_dot_product_attention(jagged(q), jagged(k), jagged(v), scale=scale)
    return o.transpose(1, 2).values()


ATTENTION = {"segments": segment_attention, "grouped": grouped_attention, "padded": padded_attention,
             "nested": nested_attention}


# ---------------------------------------------------------------------------------- families

def packing_support(model) -> str | None:
    """None when :func:`packed_hidden` can run ``model``, else why not (one phrase)."""
    try:
        from transformers import BertModel, EsmModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return "transformers is not installed"
    config = getattr(model, "config", None)
    if isinstance(model, EsmModel):
        kind = getattr(config, "position_embedding_type", "absolute")
        if kind not in ("rotary", "absolute"):
            return f"ESM position embedding {kind!r}"
    elif isinstance(model, BertModel):
        kind = getattr(config, "position_embedding_type", "absolute")
        if kind != "absolute":
            return f"BERT position embedding {kind!r}"
    else:
        return f"{type(model).__name__} has no packed forward"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "a decoder or cross-attention configuration"
    if getattr(config, "chunk_size_feed_forward", 0):
        return "a chunked feed-forward configuration"
    return None


def _hidden_index(layer: int, n_layers: int) -> int:
    """``hidden_states`` index of a requested layer (−1: the last, after ESM's final layer norm)."""
    if not -n_layers - 1 <= layer <= n_layers:
        raise IndexError(f"layer {layer} of a model with {n_layers} layers")
    return layer % (n_layers + 1)


def packed_hidden(model, packed: Packed, layers: Sequence[int] = (-1,), attention: str = "segments") -> dict:
    """The hidden states of ``layers`` for a packed batch: layer → N × D tensor (every token,
    specials included), as ``model(input_ids)`` would give protein by protein. Layer indices as in
    ``output_hidden_states`` (0: the embedding output; −1 and ``n_layers``: the last layer's, for
    ESM after ``emb_layer_norm_after``)."""
    why = packing_support(model)
    if why is not None:
        raise ValueError(f"no packed forward: {why}")
    from transformers import EsmModel

    attend = ATTENTION[attention]
    blocks = model.encoder.layer
    esm = isinstance(model, EsmModel)
    x = _esm_embeddings(model, packed) if esm else _bert_embeddings(model, packed)
    cos_sin = None
    if esm and model.rotary_embeddings is not None:
        cos_sin = model.rotary_embeddings(x, packed.positions[None])  # 1 × N × head-dim each
        cos_sin = (cos_sin[0][0], cos_sin[1][0])

    def layer(i, x):
        block = blocks[i - 1]
        x = _esm_layer(block, x, packed, cos_sin, attend) if esm else _bert_layer(block, x, packed, attend)
        if esm and i == len(blocks) and model.encoder.emb_layer_norm_after is not None:
            x = model.encoder.emb_layer_norm_after(x)
        return x

    return run_layers(x, len(blocks), layers, layer)


def run_layers(x, n_layers: int, layers: Sequence[int], layer) -> dict:
    """Run ``x = layer(i, x)`` for i = 1 … ``n_layers`` (as far as the deepest wanted layer needs)
    and keep the hidden states of ``layers`` (indices as in ``output_hidden_states``; 0 is ``x``
    itself): layer → tensor."""
    wanted = {_hidden_index(k, n_layers): k for k in layers}
    out = {}
    if 0 in wanted:
        out[wanted[0]] = x
    for i in range(1, max(wanted) + 1):  # the layers above the deepest wanted one change nothing kept
        x = layer(i, x)
        if i in wanted:
            out[wanted[i]] = x
    for k in layers:  # −1 and n_layers (or 0 and −n_layers−1) name the same tensor
        out[k] = out[wanted[_hidden_index(k, n_layers)]]
    return out


def _esm_embeddings(model, packed: Packed):
    import torch

    emb = model.embeddings
    ids = packed.tokens
    x = emb.word_embeddings(ids)
    if emb.token_dropout:
        # per protein, as EsmEmbeddings does per row: mask tokens zeroed, the rest rescaled by the
        # training mask ratio over the protein's own observed ratio
        is_mask = ids == emb.mask_token_id
        x = x.masked_fill(is_mask[:, None], 0.0)
        lengths = torch.as_tensor(packed.lengths, device=ids.device, dtype=torch.float32)
        masked = torch.zeros(len(lengths), device=ids.device).index_add_(0, packed.segment, is_mask.float())
        observed = masked / lengths
        x = (x * (1 - ESM_MASK_RATIO_TRAIN) / (1 - observed)[packed.segment][:, None]).to(x.dtype)
    if emb.position_embedding_type == "absolute":
        # fairseq's make_positions: the first token sits at padding_idx + 1
        x = x + emb.position_embeddings(packed.positions + emb.padding_idx + 1)
    if emb.layer_norm is not None:
        x = emb.layer_norm(x)
    return x


def _esm_layer(block, x, packed: Packed, cos_sin, attend):
    import torch.nn.functional as F
    from transformers.models.esm.modeling_esm import apply_rotary_pos_emb

    att = block.attention
    sa = att.self
    n, heads, hd = x.shape[0], sa.num_attention_heads, sa.attention_head_size
    h = att.LayerNorm(x)
    q = sa.query(h).view(n, heads, hd)
    k = sa.key(h).view(n, heads, hd)
    v = sa.value(h).view(n, heads, hd)
    q = q * hd ** -0.5  # ESM scales the query before the rotation, then attends with scale 1
    if cos_sin is not None:
        q, k = apply_rotary_pos_emb(q, k, cos_sin[0], cos_sin[1], unsqueeze_dim=1)
    a = attend(q, k, v, packed.cu_seqlens, 1.0).reshape(n, heads * hd)
    x = att.output(a, x)  # dense + residual
    # pre-LN feed-forward + residual. ESM's gelu is the exact (erf) one, which F.gelu computes in
    # one pass; transformers' EsmIntermediate spells it out in five elementwise passes, which on
    # a packed N × 4D tensor (out of cache) showed up in the profile of the packed forward
    return block.output(F.gelu(block.intermediate.dense(block.LayerNorm(x))), x)


def _bert_embeddings(model, packed: Packed):
    emb = model.embeddings
    x = emb.word_embeddings(packed.tokens)
    x = x + emb.token_type_embeddings(packed.tokens.new_zeros(packed.tokens.shape))
    x = x + emb.position_embeddings(packed.positions)
    return emb.dropout(emb.LayerNorm(x))


def _bert_layer(block, x, packed: Packed, attend):
    att = block.attention
    sa = att.self
    n, heads, hd = x.shape[0], sa.num_attention_heads, sa.attention_head_size
    q = sa.query(x).view(n, heads, hd)
    k = sa.key(x).view(n, heads, hd)
    v = sa.value(x).view(n, heads, hd)
    a = attend(q, k, v, packed.cu_seqlens, sa.scaling).reshape(n, heads * hd)
    x = att.output(a, x)  # dense + residual + LayerNorm (post-LN)
    return block.output(block.intermediate(x), x)


# ---------------------------------------------------------------------------------- compiled

#: what a compiled packed forward fuses, and on which families (``--compile``)
COMPILED_FAMILIES = ("esm",)


def compile_support(model) -> str | None:
    """None when :class:`CompiledESM` can run ``model``, else why not (one phrase)."""
    why = packing_support(model)
    if why is not None:
        return why
    from transformers import EsmModel

    if not isinstance(model, EsmModel):
        return f"{type(model).__name__}: the compiled packed forward is written for ESM/ESM-2 only"
    return None


def _esm_pre(x, ln_w, ln_b, eps: float, wqkv, bqkv, cos, sin, heads: int, head_dim: int):
    """Layer norm, the q/k/v projection as one GEMM, ESM's query scaling and the rotation, then
    q, k, v laid out heads × N × head-dim (each protein's rows of one head are contiguous) in the
    weights' precision — the per-token half of an ESM layer before attention."""
    import torch.nn.functional as F

    from transformers.models.esm.modeling_esm import apply_rotary_pos_emb

    n = x.shape[0]
    h = F.layer_norm(x, (x.shape[-1],), ln_w, ln_b, eps).to(wqkv.dtype)
    qkv = F.linear(h, wqkv, bqkv).view(n, 3, heads, head_dim)
    q = qkv[:, 0].float() * head_dim ** -0.5  # ESM scales the query before the rotation
    k = qkv[:, 1].float()
    if cos is not None:
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
    dt = wqkv.dtype
    return (q.to(dt).transpose(0, 1).contiguous(), k.to(dt).transpose(0, 1).contiguous(),
            qkv[:, 2].transpose(0, 1).contiguous())


def _esm_post(a, x, wo, bo, ln_w, ln_b, eps: float, w1, b1, w2, b2):
    """The output projection and residual, then the pre-LN feed-forward (exact gelu) and its
    residual; ``a`` is the attention output heads × N × head-dim, ``x`` the fp32 residual stream."""
    import torch.nn.functional as F

    n = x.shape[0]
    a = a.transpose(0, 1).reshape(n, -1)
    x = x + F.linear(a, wo, bo).float()
    h = F.layer_norm(x, (x.shape[-1],), ln_w, ln_b, eps).to(w1.dtype)
    return x + F.linear(F.gelu(F.linear(h, w1, b1)), w2, b2).float()


def _heads_attention(q, k, v, cu_seqlens: Sequence[int]):
    """Attention of each protein to itself on heads-major q, k, v (heads × N × head-dim), scale 1
    (ESM scaled the query already); one SDPA call per protein, as :func:`segment_attention`."""
    import torch
    import torch.nn.functional as F

    out = torch.empty_like(q)
    for i in range(len(cu_seqlens) - 1):
        s, e = cu_seqlens[i], cu_seqlens[i + 1]
        if e > s:
            out[:, s:e] = F.scaled_dot_product_attention(q[None, :, s:e], k[None, :, s:e], v[None, :, s:e],
                                                         scale=1.0)[0]
    return out


class CompiledESM:
    """The packed ESM forward of :func:`packed_hidden` with the per-token work of every layer (layer
    norms, rotation, casts, gelu, residual adds) fused by ``torch.compile`` into two kernels a
    layer, around the GEMMs and attention (``--compile``).

    Why: on a CPU whose bf16 GEMMs are fast (AMX), the GEMMs of the packed bf16 forward took 14% of
    its time and the elementwise passes between them ~55% (docs/benchmarks.md, "Compiled packed
    forward"). In ``bf16`` the GEMMs and attention run on bf16 copies of the weights and of q/k/v,
    the residual stream and layer norms stay fp32 (autocast's split, with attention in bf16 too);
    ``fp32`` fuses the same work without casts. The weights are copied once, fused q/k/v
    included; the module itself is not changed. Shapes are compiled dynamic (one graph for every
    token count); the first batch pays the compilation (seconds; inductor caches it on disk)."""

    def __init__(self, model, dtype: str = "bf16"):
        import torch

        why = compile_support(model)
        if why is not None:
            raise ValueError(f"no compiled forward: {why}")
        self.model = model
        wdt = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        self.dtype = dtype
        self.layers = []
        with torch.no_grad():
            for block in model.encoder.layer:
                sa = block.attention.self
                if getattr(sa, "position_embedding_type", None) not in (None, "rotary", "absolute"):
                    raise ValueError(f"no compiled forward: ESM attention {sa.position_embedding_type!r}")

                def cast(t):
                    return t.detach().to(wdt).contiguous()

                ln1, ln2 = block.attention.LayerNorm, block.LayerNorm
                self.layers.append(dict(
                    ln1=(ln1.weight.detach(), ln1.bias.detach(), ln1.eps),
                    wqkv=cast(torch.cat([sa.query.weight, sa.key.weight, sa.value.weight])),
                    bqkv=cast(torch.cat([sa.query.bias, sa.key.bias, sa.value.bias])),
                    wo=cast(block.attention.output.dense.weight), bo=cast(block.attention.output.dense.bias),
                    ln2=(ln2.weight.detach(), ln2.bias.detach(), ln2.eps),
                    w1=cast(block.intermediate.dense.weight), b1=cast(block.intermediate.dense.bias),
                    w2=cast(block.output.dense.weight), b2=cast(block.output.dense.bias),
                    heads=sa.num_attention_heads, head_dim=sa.attention_head_size))
        # Only the token count varies between calls: it is marked dynamic on every call
        # (:meth:`__call__`), everything else (heads, head width, eps) is compiled as a constant.
        # With ``dynamic=True`` the head width (24 for ESM-2 35M) was symbolic too, and inductor
        # looped over it in masked 16-wide pieces: the pre-attention kernel ran ~1.7× slower
        # (docs/benchmarks.md, "Compiled packed forward: static head shapes").
        self.pre = torch.compile(_esm_pre)
        self.post = torch.compile(_esm_post)

    def warm_up(self) -> None:
        """Compile now, on two short dummy proteins, so that a machine where inductor cannot build
        its kernels (no C++ compiler, no Python headers) is told so before any work starts, and
        the first real batch does not pay the compilation. Raises what torch.compile raised."""
        import numpy as np
        import torch

        ids = [np.full(n, 5, dtype=np.int64) for n in (9, 13)]
        with torch.inference_mode():
            self(pack(ids, device=next(self.model.parameters()).device))

    def __call__(self, packed: Packed, layers: Sequence[int] = (-1,)) -> dict:
        """Like :func:`packed_hidden`: layer → N × D float32 tensor."""
        import torch

        model = self.model
        n_layers = len(self.layers)
        x = _esm_embeddings(model, packed).float()
        cos = sin = None
        if model.rotary_embeddings is not None:
            cos, sin = model.rotary_embeddings(x, packed.positions[None])
            cos, sin = cos[0].float(), sin[0].float()
        rotation = [cos, sin] if cos is not None else []

        def layer(i, x):
            w = self.layers[i - 1]
            for t in [x, *rotation]:  # tokens × …: the one dimension that changes between calls
                torch._dynamo.mark_dynamic(t, 0)
            q, k, v = self.pre(x, *w["ln1"], w["wqkv"], w["bqkv"], cos, sin, w["heads"], w["head_dim"])
            a = _heads_attention(q, k, v, packed.cu_seqlens)
            torch._dynamo.mark_dynamic(a, 1)
            x = self.post(a, x, w["wo"], w["bo"], *w["ln2"], w["w1"], w["b1"], w["w2"], w["b2"])
            if i == n_layers and model.encoder.emb_layer_norm_after is not None:
                x = model.encoder.emb_layer_norm_after(x)
            return x

        return run_layers(x, n_layers, layers, layer)
