"""``residue_to_class``: one class per residue (secondary structure Q3/Q8). Headline: accuracy
over all scored residues of a set (Q3), bootstrap CI over proteins."""

from protlm.tasks.protocols.base import register_protocol
from protlm.tasks.protocols.labels import LabelProtocol
from protlm.tasks.protocols.targets import ResidueClasses


@register_protocol
class ResidueToClass(LabelProtocol):
    name = "residue_to_class"
    help = "per-residue embeddings → one class per residue (secondary structure)"
    kind = ResidueClasses()
    input_level = "residue"
    default_head = "cnn"
