"""What a person sees on the terminal: bars only on a TTY (contract/progress.py, the hub's bars
in contract/modelref.py), and the lines `make run` ends its start-up with (managers/announce.py;
tests/test_make_run.py sees them in a real `make run`)."""

from __future__ import annotations

import argparse
import io

import pytest

from contract import modelref
from contract.progress import copy_stream, on_terminal, progress_bar
from contract.settings import Settings
from managers import announce


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_one_line_and_no_bar() -> None:
    out = io.StringIO()
    with progress_bar("extract model.zip", 3 << 20, stream=out) as bar:
        assert copy_stream(io.BytesIO(b"x" * (3 << 20)), io.BytesIO(), bar) == 3 << 20
    assert out.getvalue() == "extract model.zip: 3.0 MiB…\n"
    out = io.StringIO()
    with progress_bar("import x.gguf", 272, "tensor", stream=out) as bar:
        bar.update()
    assert out.getvalue() == "import x.gguf: 272 tensors…\n"


def test_on_a_terminal_a_bar_and_quiet_means_nothing() -> None:
    tty = Terminal()
    assert on_terminal(tty) and not on_terminal(io.StringIO())
    with progress_bar("import x.gguf", 2, "tensor", stream=tty) as bar:
        bar.update(2)
    assert "\r" in tty.getvalue() and "2/2" in tty.getvalue()
    quiet = Terminal()
    with progress_bar("import x.gguf", 2, "tensor", enabled=False, stream=quiet) as bar:
        bar.update(2)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("tty", [True, False])
def test_hub_bars_follow_the_terminal(monkeypatch: pytest.MonkeyPatch, tty: bool) -> None:
    import importlib

    from huggingface_hub import constants
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module, not its class

    for module in (constants, hub_tqdm):  # as if HF_HUB_DISABLE_PROGRESS_BARS were unset
        monkeypatch.setattr(module, "HF_HUB_DISABLE_PROGRESS_BARS", None)
    monkeypatch.setattr(modelref, "on_terminal", lambda: tty)
    try:
        modelref._hub_bars_follow_terminal()
        assert are_progress_bars_disabled() is not tty
    finally:
        enable_progress_bars()  # the hub's default


def test_the_ready_line() -> None:
    url = announce.base_url(Settings(host="0.0.0.0", api_port=11440))
    assert url == "http://127.0.0.1:11440"
    line = announce.ready_line(url, True, {"tiny-text": "text"}, {"tiny-embed": "embedding"})
    assert line == (
        "MLX Inference Server ready — playground http://127.0.0.1:11440/ · API http://127.0.0.1:11440/v1"
        " · serving: tiny-text (text) · loading: tiny-embed (embedding)"
    )
    assert announce.ready_line(url, False, {}, {}).endswith("API http://127.0.0.1:11440/v1 · no model preloaded")
    assert announce.base_url(Settings(host="::1", api_port=8000)) == "http://[::1]:8000"


def test_expected_models_skip_empty_kinds(tmp_path) -> None:
    (tmp_path / "tiny-text").mkdir()
    args = argparse.Namespace(text="./tiny-text", vision="", embedding="org/embedder")
    settings = Settings(models_dir=str(tmp_path))
    assert announce.expected_models(args, settings) == {"tiny-text": "text", "org/embedder": "embedding"}


def test_the_api_never_answering_is_a_quick_false() -> None:
    assert announce.answers("http://127.0.0.1:9/health", timeout=0.5) is None
    assert announce.wait_for_api("http://127.0.0.1:9/health", deadline=0) is False
