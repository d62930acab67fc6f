"""``sequence_to_class``: one class per protein from the mean-pooled embedding (localization
Q10/Q2, fold, SCOP class); a head that reads residues (light attention) gets them. Headline:
accuracy over proteins (with MCC)."""

from protlm.tasks.protocols.base import register_protocol
from protlm.tasks.protocols.labels import LabelProtocol
from protlm.tasks.protocols.targets import ProteinClasses


@register_protocol
class SequenceToClass(LabelProtocol):
    name = "sequence_to_class"
    help = "per-protein embedding (mean) → one class per protein"
    kind = ProteinClasses()
    input_level = "pooled"
    default_head = "ffn"
