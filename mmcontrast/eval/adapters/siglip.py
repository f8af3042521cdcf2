"""transformers ``SiglipModel``: texts padded to the maximum length.

SigLIP's text tower pools the last token and was trained on texts padded to 64 tokens,
so captions are padded the same way (``padding="max_length"``), as its model card says.
"""

from mmcontrast.eval.adapters.base import MODEL_FAMILIES
from mmcontrast.eval.adapters.hf import TransformersDualEncoder


@MODEL_FAMILIES.register("siglip", "transformers SiglipModel folder or Hub id")
class SiglipModelAdapter(TransformersDualEncoder):
    family = "siglip"
    model_types = ("siglip",)
    padding = "max_length"
