"""transformers ``CLIPModel`` (OpenAI CLIP and its fine-tunes)."""

from mmcontrast.eval.adapters.base import MODEL_FAMILIES
from mmcontrast.eval.adapters.hf import TransformersDualEncoder


@MODEL_FAMILIES.register("clip", "transformers CLIPModel folder or Hub id")
class ClipModelAdapter(TransformersDualEncoder):
    family = "clip"
    model_types = ("clip",)
