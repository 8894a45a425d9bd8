"""The embeddings worker: sentence vectors from BERT encoders written in MLX."""
