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

from protlm.embed.backend import Backend, LMOutput, residue_positions
from protlm.embed.backends.hf import HFBackend
from protlm.embed.registry import register
from protlm.embed.spec import EmbedOptions
from protlm.errors import ConfigError
from protlm.models.families import Family
from protlm.models.transfo_xl import ProtTXLModel

FAMILY = Family("prottxl", "prottxl", "ProtTXLModel", space_separated=True, map_rare=True)


class ProtTXLBackend(HFBackend):
    """The Hugging Face backend with ProtTXL's segment walk in place of one forward pass."""

    def __init__(self, source: str, options: EmbedOptions):

        super().__init__(source, options, family=FAMILY, model_class=ProtTXLModel)
        self.max_residues = None  # segment recurrence: any length, bounded memory

    def memory_bytes(self, length: int) -> int:
        return 0  # bounded by segment_length + mem_len whatever the length (the output aside)

    def forward_tokens(self, seqs, *, layers=(-1,), attentions=False, logits=False, cpu=False) -> LMOutput:
        """The asked layers for a batch, walked segment by segment (memory carries no gradient:
        Transformer-XL's own training rule)."""
        import torch

        if attentions or logits:
            raise ConfigError("prottxl: attention maps and logits are not offered for ProtTXL's segment walk")
        model = self._cpu() if cpu else self.model
        device = torch.device("cpu") if cpu else torch.device(self.device)
        ids, _ = self.encode_batch(seqs)  # right padding: a causal model's real tokens never see it
        ids_t = torch.from_numpy(ids).to(device)
        seg = model.config.segment_length
        want_all = any(layer != -1 for layer in layers)
        mems = None
        pieces: dict[int, list] = {layer: [] for layer in layers}
        # bf16 on a CPU: autocast over the fp32 weights, as HFBackend.forward_tokens does (without
        # it, --dtype bf16 ran fp32 and was recorded as bf16); hidden states come back as float32
        autocast = self.cpu_autocast and device.type == "cpu"
        for start in range(0, ids_t.shape[1], seg):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model(input_ids=ids_t[:, start:start + seg], mems=mems, use_mems=True,
                            output_hidden_states=want_all)
            mems = out.mems
            for layer in layers:
                h = out.hidden_states[layer] if layer != -1 else out.last_hidden_state
                pieces[layer].append(h.float())
        starts, lengths = [len(self.layout.prefix)] * len(seqs), [len(s) for s in seqs]
        hidden, mask = {}, None
        for layer in layers:
            hidden[layer], mask = residue_positions(torch.cat(pieces[layer], dim=1), starts, lengths)
        return LMOutput(hidden=hidden, mask=mask)

    def describe(self) -> dict:
        return {**super().describe(), "layer": self.options.layer,
                "dtype": "int8-dynamic" if self.options.int8 else self.options.dtype,
                "segment_length": self.config.get("segment_length"), "mem_len": self.config.get("mem_len")}


@register(model_types=("prottxl",), help="a ProtTXL (Transformer-XL) folder, embedded segment by segment with memory")
def _prottxl(source: str, options: EmbedOptions) -> Backend:
    return ProtTXLBackend(source, options)
