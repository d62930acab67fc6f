"""ProtTXL: a Transformer-XL (Dai et al. 2019) as a protlm model family on transformers' base classes.

transformers 5 removed Transformer-XL; ProtTrans' ProtTXL was one. This module is a fresh,
compact implementation of the paper's two ideas, written against ``PreTrainedConfig`` /
``PreTrainedModel`` so that ``save_pretrained`` / ``from_pretrained`` work on ordinary folders
(``config.json`` + ``model.safetensors``; no ``trust_remote_code``): importing :mod:`protlm.models`
registers ``model_type: prottxl`` with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``.

* **Relative positional attention.** The score of query ``i`` and key ``j`` is
  ``(q_i + u)·k_j + (q_i + v)·W_r R_{i-j}``: content and position terms with the learned global
  biases ``u`` (``r_w_bias``) and ``v`` (``r_r_bias``), one pair per layer, and ``R`` the
  sinusoidal encoding of the distance ``i - j`` (no absolute positions anywhere, so any length
  works). Post-LayerNorm blocks with a ReLU feed-forward, as in the paper's code.
* **Segment-level recurrence.** A sequence is processed in segments of ``segment_length``
  tokens; each layer's queries of a segment attend to the segment itself (causally) and to a
  memory of the last ``mem_len`` hidden states *entering that layer* from the segments before,
  which receives no gradient (``detach``).

Two ways to run the same computation:

* ``model(input_ids, mems=past)`` returns ``mems`` for the next call: the classical
  segment-by-segment walk (bounded memory for any length; what embedding uses).
* ``model(input_ids)`` on a whole batch applies the recurrence inside one forward: for every
  layer, segment ``s``'s memory is the detached layer input of the ``mem_len`` positions before
  it. Because a layer's memory is that layer's own input from earlier segments, computing layer
  by layer over all segments gives exactly the numbers *and gradients* of the walk (tests
  check both), with one forward and one backward per micro-batch — so DDP, FSDP, gradient
  accumulation and activation checkpointing work unchanged. Attention costs
  ``O(L·(segment_length + mem_len))``, not ``O(L²)``.

With right padding (protlm's) a real token never sees a pad (pads come after it); an
``attention_mask`` with padding on the left is refused rather than silently mis-modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput


class ProtTXLConfig(PreTrainedConfig):
    r"""Configuration of a :class:`ProtTXLModel`.

    segment_length: tokens per segment (the paper's ``tgt_len``); mem_len: hidden states kept per
    layer (the paper's ``mem_len``); clamp_len: relative distances above it use its encoding
    (-1: no clamping); dropout / dropatt: residual and attention-probability dropout.

    pre_lnorm: ``False`` (the default, and what every ``config.json`` without the key means) is
    the paper's post-LayerNorm block, ``LN(x + f(x))``; ``True`` is the pre-LayerNorm block
    ``x + f(LN(x))`` (the paper code's ``pre_lnorm`` option) with one final LayerNorm on the last
    layer's output. At protlm's CPU scale the post-LN model's last layer collapsed to a
    residue-constant vector (docs/results.md, "ProtTXL's collapsed last layer"); pre-LN keeps the
    embedding in an additive residual stream.
    """

    model_type = "prottxl"
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_head",
                     "num_hidden_layers": "n_layer", "intermediate_size": "d_inner"}

    vocab_size: int = 30
    d_model: int = 512
    n_layer: int = 6
    n_head: int = 8
    d_head: int | None = None
    d_inner: int = 2048
    segment_length: int = 512
    mem_len: int = 512
    clamp_len: int = -1
    dropout: float = 0.0
    dropatt: float = 0.0
    layer_norm_eps: float = 1e-5
    pre_lnorm: bool = False
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int | None = 2
    eos_token_id: int | None = 3
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.d_head is None:
            if self.d_model % self.n_head:
                raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
            self.d_head = self.d_model // self.n_head
        if self.segment_length < 1:
            raise ValueError(f"segment_length must be positive, not {self.segment_length}")
        if self.mem_len < 0:
            raise ValueError(f"mem_len must be >= 0, not {self.mem_len}")
        super().__post_init__(**kwargs)


@dataclass
class ProtTXLOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    mems: list[torch.Tensor] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class ProtTXLLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mems: list[torch.Tensor] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def sinusoid(distances: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-XL's relative encoding: [sin(d·f), cos(d·f)] with f = 1/10000^(2k/dim)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32, device=distances.device) / dim))
    angles = distances.float()[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


@dataclass
class _Plan:
    """Where every segment's keys come from, shared by all layers of one forward."""

    n_seg: int
    seg: int  # queries per segment (S)
    mem: int  # memory slots per segment (0 when no segment has any memory)
    prev: int  # length of the memory handed in
    length: int  # tokens of this call
    mask: torch.Tensor  # (n_seg, S, mem + S) True where a key may not be attended
    distance: torch.Tensor  # (S, mem + S) relative distance index into the encodings


def _plan(length: int, prev: int, config: ProtTXLConfig, device) -> _Plan:
    seg = min(config.segment_length, length)
    n_seg = -(-length // seg)
    mem = config.mem_len if (config.mem_len > 0 and (prev > 0 or n_seg > 1)) else 0
    a = torch.arange(seg, device=device)[:, None]
    b = torch.arange(mem + seg, device=device)[None, :]
    distance = a + mem - b  # query offset a, key slot b: memory slots first, then the segment
    s = torch.arange(n_seg, device=device)[:, None, None]
    key_position = s * seg - mem + b[None]  # relative to the first token of this call
    mask = (distance < 0)[None] | (key_position < -prev)  # the future, and memory that does not exist
    return _Plan(n_seg, seg, mem, prev, length, mask, distance.clamp(min=0))


class ProtTXLLayer(GradientCheckpointingLayer):
    def __init__(self, config: ProtTXLConfig):
        super().__init__()
        h, d, dm = config.n_head, config.d_head, config.d_model
        self.n_head, self.d_head = h, d
        self.qkv = nn.Linear(dm, 3 * h * d, bias=False)
        self.r_net = nn.Linear(dm, h * d, bias=False)
        self.o = nn.Linear(h * d, dm, bias=False)
        self.r_w_bias = nn.Parameter(torch.zeros(h, d))  # u
        self.r_r_bias = nn.Parameter(torch.zeros(h, d))  # v
        self.attn_norm = nn.LayerNorm(dm, eps=config.layer_norm_eps)
        self.ff_in = nn.Linear(dm, config.d_inner)
        self.ff_out = nn.Linear(config.d_inner, dm)
        self.ff_norm = nn.LayerNorm(dm, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.dropout)
        self.dropatt = nn.Dropout(config.dropatt)
        self.scale = 1.0 / math.sqrt(d)
        self.pre_lnorm = bool(config.pre_lnorm)

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor | None, pos_emb: torch.Tensor,
                plan: _Plan) -> torch.Tensor:
        """``hidden``: (B, L, D) this layer's input; ``memory``: (B, prev, D) detached, or None."""
        bsz, length, dm = hidden.shape
        n, seg, mem, h, d = plan.n_seg, plan.seg, plan.mem, self.n_head, self.d_head
        pad = n * seg - length
        # pre-LN: queries, keys and values read the normalised stream; the memory (like the
        # layer's input) is kept raw and normalised here with the segment, so the walk with
        # ``mems`` and the one-forward recurrence give the same numbers and gradients.
        x = self.attn_norm(hidden) if self.pre_lnorm else hidden
        cur = F.pad(x, (0, 0, 0, pad)).view(bsz, n, seg, dm)
        if mem:
            # Memory slot m of segment s is the detached layer input at position s·S - mem + m
            # (earlier calls' memory first); slots before the start are zeros and masked.
            past = [hidden.new_zeros(bsz, mem, dm)]
            if memory is not None and memory.shape[1]:
                past.append(memory.to(hidden.dtype))
            past.append(hidden.detach())
            source = torch.cat(past, dim=1)
            offset = source.shape[1] - length - mem  # = prev: index of the call's first token, minus mem
            needed = offset + (n - 1) * seg + mem
            windows = source[:, offset:needed].unfold(1, mem, seg).permute(0, 1, 3, 2)  # (B, n, mem, D)
            if self.pre_lnorm:
                windows = self.attn_norm(windows)
            keys_in = torch.cat([windows, cur], dim=2)
        else:
            keys_in = cur
        q, k, v = self.qkv(keys_in).view(bsz, n, mem + seg, 3, h, d).unbind(3)
        q = q[:, :, mem:]  # the segment's own positions ask; memory and segment answer
        r = self.r_net(pos_emb).view(mem + seg, h, d)  # encodings of distances 0 .. mem+S-1
        ac = torch.einsum("bnihd,bnjhd->bnhij", q + self.r_w_bias, k)
        bd = torch.einsum("bnihd,jhd->bnhij", q + self.r_r_bias, r)
        index = plan.distance.view(1, 1, 1, seg, mem + seg).expand(bsz, n, h, seg, mem + seg)
        bd = torch.gather(bd, -1, index)
        scores = (ac + bd) * self.scale
        scores = scores.masked_fill(plan.mask[None, :, None], torch.finfo(scores.dtype).min)
        probs = self.dropatt(torch.softmax(scores.float(), dim=-1).to(v.dtype))
        attended = torch.einsum("bnhij,bnjhd->bnihd", probs, v).reshape(bsz, n * seg, h * d)[:, :length]
        if self.pre_lnorm:
            out = hidden + self.drop(self.o(attended))
            return out + self.drop(self.ff_out(self.drop(F.relu(self.ff_in(self.ff_norm(out))))))
        out = self.attn_norm(hidden + self.drop(self.o(attended)))
        ff = self.drop(self.ff_out(self.drop(F.relu(self.ff_in(out)))))
        return self.ff_norm(out + ff)


class ProtTXLPreTrainedModel(PreTrainedModel):
    config_class = ProtTXLConfig
    config: ProtTXLConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ProtTXLLayer"]

    def _init_weights(self, module):
        from transformers import initialization as init

        super()._init_weights(module)
        if isinstance(module, ProtTXLLayer):
            init.normal_(module.r_w_bias, mean=0.0, std=self.config.initializer_range)
            init.normal_(module.r_r_bias, mean=0.0, std=self.config.initializer_range)


class ProtTXLModel(ProtTXLPreTrainedModel):
    def __init__(self, config: ProtTXLConfig):
        super().__init__(config)
        self.word_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.emb_scale = math.sqrt(config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([ProtTXLLayer(config) for _ in range(config.n_layer)])
        # pre-LN only: the residual stream is never normalised inside the blocks (absent from
        # post-LN models, so their checkpoints hold exactly the same tensors as before).
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.pre_lnorm else None
        self.post_init()

    def get_input_embeddings(self):
        return self.word_emb

    def set_input_embeddings(self, value):
        self.word_emb = value

    def init_mems(self, batch_size: int) -> list[torch.Tensor]:
        p = next(self.parameters())
        return [p.new_zeros(batch_size, 0, self.config.d_model) for _ in range(self.config.n_layer)]

    def forward(self, input_ids: torch.Tensor | None = None, mems: list[torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                use_mems: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs) -> ProtTXLOutput:
        """``mems``: what the previous call returned (one (B, M, D) tensor per layer) or None.

        ``use_mems`` (default: outside training, or when ``mems`` is given) returns the memory
        for the next segment: the last ``mem_len`` inputs of every layer, detached.
        """
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] > 1:
            m = attention_mask.bool()
            if (~m[:, :-1] & m[:, 1:]).any():
                raise ValueError("ProtTXL is causal and expects right padding: attention_mask has a 0 before a 1")
        if inputs_embeds is None:
            inputs_embeds = self.word_emb(input_ids) * self.emb_scale
        if mems is not None and len(mems) != self.config.n_layer:
            raise ValueError(f"mems must hold {self.config.n_layer} tensors (one per layer), not {len(mems)}")
        if mems is not None and self.config.mem_len:
            mems = [m[:, -self.config.mem_len:] for m in mems]
        elif mems is not None:
            mems = None
        bsz, length, _ = inputs_embeds.shape
        prev = mems[0].shape[1] if mems is not None else 0
        plan = _plan(length, prev, self.config, inputs_embeds.device)
        distances = torch.arange(plan.mem + plan.seg, device=inputs_embeds.device)
        if self.config.clamp_len > 0:
            distances = distances.clamp(max=self.config.clamp_len)
        pos_emb = self.drop(sinusoid(distances, self.config.d_model).to(inputs_embeds.dtype))
        hidden = self.drop(inputs_embeds)
        if use_mems is None:
            use_mems = (not self.training) or mems is not None
        want_hidden = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        states = [hidden]
        new_mems = []
        for i, layer in enumerate(self.layers):
            memory = mems[i] if mems is not None else None
            if use_mems and self.config.mem_len:
                past = hidden.detach() if memory is None else torch.cat([memory, hidden.detach()], dim=1)
                new_mems.append(past[:, -self.config.mem_len:])
            hidden = layer(hidden, memory, pos_emb, plan)
            states.append(hidden)
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
            states[-1] = hidden  # as GPT-2 does: the last entry is what the LM head reads
        if use_mems and not self.config.mem_len:
            new_mems = self.init_mems(bsz)
        return ProtTXLOutput(last_hidden_state=hidden, mems=new_mems if use_mems else None,
                             hidden_states=tuple(states) if want_hidden else None)


class ProtTXLForCausalLM(ProtTXLPreTrainedModel):
    def __init__(self, config: ProtTXLConfig):
        super().__init__(config)
        self.transformer = ProtTXLModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.word_emb

    def set_input_embeddings(self, value):
        self.transformer.word_emb = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids: torch.Tensor | None = None, mems: list[torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, use_mems: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                **kwargs) -> ProtTXLLMOutput:
        """``labels`` as in transformers' causal LMs: the input ids (shifted here), -100 ignored."""
        out = self.transformer(input_ids, mems=mems, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                               use_mems=use_mems, output_hidden_states=output_hidden_states)
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return ProtTXLLMOutput(loss=loss, logits=logits, mems=out.mems, hidden_states=out.hidden_states)


def _register() -> None:
    try:
        AutoConfig.register(ProtTXLConfig.model_type, ProtTXLConfig)
    except ValueError:  # already registered (module reloaded)
        return
    AutoModel.register(ProtTXLConfig, ProtTXLModel)
    AutoModelForCausalLM.register(ProtTXLConfig, ProtTXLForCausalLM)


_register()
