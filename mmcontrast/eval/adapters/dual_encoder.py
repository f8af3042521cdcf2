"""transformers ``VisionTextDualEncoderModel`` (any vision tower + any text tower)."""

from mmcontrast.eval.adapters.base import MODEL_FAMILIES
from mmcontrast.eval.adapters.hf import TransformersDualEncoder


@MODEL_FAMILIES.register(
    "vision-text-dual-encoder", "transformers VisionTextDualEncoderModel folder or Hub id"
)
class VisionTextDualEncoderAdapter(TransformersDualEncoder):
    family = "vision-text-dual-encoder"
    model_types = ("vision-text-dual-encoder",)
