"""``residues_to_class`` (biotrainer's meaning): the per-residue embeddings of a protein → one
class per protein — the light-attention case; per-protein heads that pool (ffn, logreg) pool
inside the head. Headline: accuracy over proteins.

Contact prediction was called ``residues_to_class`` before protlm 0.4; such a config (its
``data:`` names contact data, or its head is a contact head) is read as
``residue_pairs_to_class`` with a deprecation warning (:mod:`.residue_pairs_to_class`)."""

from protlm.tasks.protocols.base import register_protocol
from protlm.tasks.protocols.labels import LabelProtocol
from protlm.tasks.protocols.targets import ProteinClasses


@register_protocol
class ResiduesToClass(LabelProtocol):
    name = "residues_to_class"
    help = "per-residue embeddings → one class per protein (light attention)"
    kind = ProteinClasses()
    input_level = "residue"
    default_head = "light_attention"
