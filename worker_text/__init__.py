"""Text worker: mlx-lm models served through rq jobs."""
