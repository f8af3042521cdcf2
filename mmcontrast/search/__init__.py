"""Search over embedded collections: embed images and captions in clip-retrieval's layout."""

from mmcontrast.search.embed import Embeddings, EmbedSummary, embed_collection, read_embeddings

__all__ = ["EmbedSummary", "Embeddings", "embed_collection", "read_embeddings"]
