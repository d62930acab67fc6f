"""``residues_to_value`` (biotrainer's meaning): the per-residue embeddings of a protein → one
number per protein (light attention for regression). Headline: Spearman ρ."""

from protlm.tasks.protocols.base import register_protocol
from protlm.tasks.protocols.labels import LabelProtocol
from protlm.tasks.protocols.targets import ProteinValues


@register_protocol
class ResiduesToValue(LabelProtocol):
    name = "residues_to_value"
    help = "per-residue embeddings → one value per protein (light attention)"
    kind = ProteinValues()
    input_level = "residue"
    default_head = "light_attention"
