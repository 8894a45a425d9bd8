"""The settings every worker applies to MLX before importing it (runtime/cli.py)."""

from contract.settings import Settings
from runtime.cli import apply_mlx_settings


def test_cudnn_attention_is_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv("CUDNN_ATTENTION", raising=False)
    environ = {"MLX_CUDA_USE_CUDNN_SDPA": "1"}  # MLX's own default: CUDNN_ATTENTION decides
    apply_mlx_settings(Settings(), environ)
    assert environ["MLX_CUDA_USE_CUDNN_SDPA"] == "0"


def test_cudnn_attention_on(monkeypatch):
    monkeypatch.setenv("CUDNN_ATTENTION", "1")
    environ: dict[str, str] = {}
    apply_mlx_settings(Settings(), environ)
    assert environ == {"MLX_CUDA_USE_CUDNN_SDPA": "1"}
