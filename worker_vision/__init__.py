"""The vision worker: chat over text and images with mlx-vlm (runs in .venv-vision)."""
