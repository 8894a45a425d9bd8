"""MLX code both engines share (worker_text over mlx-lm, worker_vision over mlx-vlm). Only
the two worker packages import it: both venvs have mlx, but neither has the other's library,
so nothing here imports mlx-lm or mlx-vlm — a library's own functions are passed in."""
