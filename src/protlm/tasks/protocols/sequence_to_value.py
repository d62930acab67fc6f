"""``sequence_to_value``: one number per protein from the mean-pooled embedding (stability,
fluorescence). Headline: Spearman ρ (with Pearson r and MSE)."""

from protlm.tasks.protocols.base import register_protocol
from protlm.tasks.protocols.labels import LabelProtocol
from protlm.tasks.protocols.targets import ProteinValues


@register_protocol
class SequenceToValue(LabelProtocol):
    name = "sequence_to_value"
    help = "per-protein embedding (mean) → one value per protein"
    kind = ProteinValues()
    input_level = "pooled"
    default_head = "ffn"
