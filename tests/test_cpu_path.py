"""The text worker's fast CPU path (mlx_common/cpu_blas.py, worker_text/cpu_weights.py):
finding OpenBLAS and preloading it by a re-exec, a real worker that runs on it and answers, and
a small quantized model made float32 — its layers, its size, its prompt-cache key and how often
its greedy tokens agree with the quantized model's."""

from __future__ import annotations

import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.models.cache import make_prompt_cache

from contract.registry import live_workers
from contract.settings import Settings
from mlx_common import cpu_blas
from mlx_common.cpu_blas import HINT, BlasNotFound, find_blas, preload_env, preloaded
from worker_text.cpu_weights import float32_bytes
from worker_text.tiny import CONFIG, VOCAB_SIZE

from .support import alias, client_for, wait_until

MODEL = "tiny-4bit"
# tiny-text's llama, with heads of 32 values so an 8-bit KV cache (group 32) fits them.
SHAPE = {**CONFIG, "hidden_size": 128, "intermediate_size": 256, "vocab_size": VOCAB_SIZE}
OPENBLAS = find_blas("auto")
needs_openblas = pytest.mark.skipif(
    OPENBLAS is None or not cpu_blas.on_cpu(), reason="no OpenBLAS here (apt-get install libopenblas0-pthread)"
)


on_a_cpu = pytest.mark.skipif(not cpu_blas.on_cpu(), reason="MLX computes on a GPU here: no CPU path")


@pytest.fixture(scope="module")
def model4(models_dir) -> str:
    """A tiny random-weight llama in 4 bits (bfloat16 scales), as mlx-community models are."""
    from worker_text.tiny import build_shaped

    if not (models_dir / MODEL).exists():
        build_shaped(models_dir / MODEL, SHAPE, bits=4, group_size=32)
    return MODEL


def settings_for(models_dir: Path, **fields) -> Settings:
    return Settings(models_dir=str(models_dir), **fields)


# --- finding the BLAS and composing the re-exec ---


def test_find_blas_auto_off_and_a_path(tmp_path):
    lib = tmp_path / "libopenblas.so.0"
    lib.write_bytes(b"")
    assert find_blas(str(lib)) == lib
    for off in ("off", "0", "OFF", ""):
        assert find_blas(off) is None
    missing = tmp_path / "nothing.so"
    assert find_blas("auto", search=[missing, lib]) == lib  # the first that exists
    assert find_blas("auto", search=[missing]) is None


def test_a_missing_blas_file_is_a_clear_error(tmp_path):
    with pytest.raises(BlasNotFound, match=r"CPU_BLAS=.*nothing\.so: no such file"):
        find_blas(str(tmp_path / "nothing.so"))


def test_the_reexec_environment(tmp_path):
    lib = Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0")
    env = preload_env({"PATH": "/bin"}, lib, cores=2)
    assert env == {"PATH": "/bin", "LD_PRELOAD": str(lib), "OPENBLAS_NUM_THREADS": "2"}
    assert preloaded(env, lib)  # the marker: the re-executed worker does not re-exec again
    env = preload_env({"LD_PRELOAD": "/opt/libjemalloc.so", "OPENBLAS_NUM_THREADS": "1"}, lib, cores=16)
    assert env["LD_PRELOAD"] == f"{lib}:/opt/libjemalloc.so" and env["OPENBLAS_NUM_THREADS"] == "1"
    assert preload_env({}, lib, cores=1)["OPENBLAS_NUM_THREADS"] == "1"
    assert preload_env({}, lib, cores=64)["OPENBLAS_NUM_THREADS"] == "8"
    assert not preloaded({"LD_PRELOAD": "/opt/libjemalloc.so"}, lib)


@on_a_cpu
def test_the_make_run_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_blas, "candidates", lambda machine=None: [])
    assert cpu_blas.hint(Settings(cpu_blas="auto")) == HINT  # this CPU, no BLAS found
    assert cpu_blas.hint(Settings(cpu_blas="off")) is None
    assert "no such file" in (cpu_blas.hint(Settings(cpu_blas=str(tmp_path / "x.so"))) or "")
    (tmp_path / "libopenblas.so.0").write_bytes(b"")
    monkeypatch.setattr(cpu_blas, "candidates", lambda machine=None: [tmp_path / "libopenblas.so.0"])
    assert cpu_blas.hint(Settings(cpu_blas="auto")) is None


# --- float32 weights ---


@on_a_cpu
def test_dequantized_on_the_cpu_its_layers_are_float32_linear(model4, models_dir):
    from mlx.utils import tree_flatten

    from worker_text.loading import load_text_model

    kept = load_text_model(model4, settings_for(models_dir, cpu_dequantize_max_gb=0))
    assert not kept.dequantized and isinstance(kept.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    expected = float32_bytes(kept.model)
    loaded = load_text_model(model4, settings_for(models_dir))
    assert loaded.dequantized
    linears = [m for _, m in loaded.model.named_modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is nn.Linear and m.weight.dtype == mx.float32 for m in linears)
    assert not [m for _, m in loaded.model.named_modules() if isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding)]
    params = tree_flatten(loaded.model.parameters())
    assert {v.dtype for _, v in params} == {mx.float32}
    assert sum(v.size for _, v in params) * 4 == expected  # the size was right before converting
    too_big = load_text_model(model4, settings_for(models_dir, cpu_dequantize_max_gb=expected / 2 / 1024**3))
    assert not too_big.dequantized


@on_a_cpu
def test_kv_figures_and_the_disk_cache_key_follow_the_weights(model4, models_dir, tmp_path):
    """The memory budget counts a float32 KV cache; a dequantized model's prompt caches on disk
    are not the quantized model's (their dtype differs), so their keys differ."""
    from worker_text.__main__ import make_engine

    def engine(**fields):
        settings = settings_for(models_dir, prompt_cache_dir=str(tmp_path), **fields)
        made = make_engine(model4, settings, 2)
        made.caches.close()
        return made

    quantized, dequantized = engine(cpu_dequantize_max_gb=0), engine()
    assert quantized.caches.disk.key != dequantized.caches.disk.key
    assert '"weights": "float32-dequantized"' in dequantized.caches.disk.key
    assert "float32-dequantized" not in quantized.caches.disk.key  # the quantized model's key is unchanged
    per_token = dequantized.budget.bytes_per_token
    assert per_token == 2 * SHAPE["num_hidden_layers"] * SHAPE["num_key_value_heads"] * 32 * 4  # float32
    assert per_token == 2 * quantized.budget.bytes_per_token  # bfloat16 there
    kv8 = engine(kv_bits=8, kv_group_size=32)
    assert kv8.budget.bytes_per_token < per_token / 2
    assert dequantized.memory_status()["dequantized"] is True


def greedy(model, prompt: list[int], n: int) -> list[int]:
    cache = make_prompt_cache(model)
    logits = model(mx.array([prompt]), cache=cache)[:, -1]
    out = []
    for _ in range(n):
        token = mx.argmax(logits, axis=-1)
        out.append(token.item())
        logits = model(token[:, None], cache=cache)[:, -1]
    return out


@on_a_cpu
def test_greedy_tokens_of_the_dequantized_model_agree(model4, models_dir):
    """Same weight values, float32 arithmetic instead of bfloat16. On a random-weight model
    (flat logits, many near ties) a free-running continuation drifts apart after the first
    flipped tie, so what is held here is the next token at every position of the same text
    (teacher-forced); free-running agreement is printed. bench/cpu_path.py measures SmolLM2."""
    from worker_text.loading import load_text_model

    quantized = load_text_model(model4, settings_for(models_dir, cpu_dequantize_max_gb=0)).model
    dequantized = load_text_model(model4, settings_for(models_dir)).model
    prompts, n = 16, 32
    same = positions = same_first = whole = 0
    before_difference = 0.0
    for i in range(prompts):
        prompt = [(i * 37 + k * 11) % SHAPE["vocab_size"] for k in range(12)]
        a, b = greedy(quantized, prompt, n), greedy(dequantized, prompt, n)
        agree = next((k for k in range(n) if a[k] != b[k]), n)
        before_difference += agree / n / prompts
        same_first += a[0] == b[0]
        whole += agree == n
        text = mx.array([prompt + a])  # the quantized model's own continuation, read by both
        picks = [mx.argmax(m(text)[0, len(prompt) - 1 : -1], axis=-1) for m in (quantized, dequantized)]
        same += int((picks[0] == picks[1]).sum().item())
        positions += n
    print(f"\n{prompts} prompts x {n} tokens: next token on the same text {same}/{positions} "
          f"({same / positions:.1%}); free-running: first token {same_first}/{prompts}, whole "
          f"continuation {whole}/{prompts}, tokens before the first difference {before_difference:.1%}")  # fmt: skip
    assert same >= 0.85 * positions and same_first >= prompts * 3 // 4


# --- a real worker ---


def worker_log(proc) -> str:
    return proc.log_path.read_text(errors="replace")


def mapped(pid: int, name: str) -> bool:
    return any(name in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


@needs_openblas
def test_a_text_worker_runs_on_openblas_and_answers(stack, api_url, model4, ctx):
    """Started the normal way (`python -m worker_text`), the worker re-executes itself with
    OpenBLAS preloaded (same pid), says so, dequantizes, and answers with an 8-bit KV cache."""
    assert OPENBLAS is not None
    proc = stack.start_worker(model4, CPU_BLAS="auto", KV_BITS="8", KV_GROUP_SIZE="32")
    log = worker_log(proc)
    assert re.search(rf"CPU BLAS: {re.escape(str(OPENBLAS))}", log), log
    assert "dequantized the weights to float32" in log
    assert mapped(proc.pid, "libopenblas")

    def figures():
        entry = next((w for w in live_workers(ctx.conn, ctx.keys) if w.pid == proc.pid), None)
        return entry.memory if entry is not None and "cpu_blas" in entry.memory else None

    memory = wait_until(figures, 10, "the worker's CPU figures")
    assert memory["cpu_blas"] == str(OPENBLAS) and memory["dequantized"] is True and memory["kv_bits"] == 8
    reply = client_for(api_url).chat.completions.create(
        model=model4, messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=6
    )
    assert reply.usage.completion_tokens == 6 and reply.choices[0].message.content
    proc.stop()


@on_a_cpu
def test_cpu_blas_off_keeps_mlx_own_blas(stack, models_dir, model4):
    model = alias(models_dir, "tiny-4bit-reference", target=MODEL)
    proc = stack.start_worker(model, CPU_BLAS="off")
    try:
        assert "CPU BLAS: MLX's reference BLAS" in worker_log(proc)
        assert not mapped(proc.pid, "libopenblas")
    finally:
        proc.stop()


@on_a_cpu
def test_a_missing_cpu_blas_stops_the_worker_at_start(stack, models_dir, model4, tmp_path):
    model = alias(models_dir, "tiny-4bit-missing-blas", target=MODEL)
    proc = stack.start_worker(model, wait=False, CPU_BLAS=str(tmp_path / "libnothing.so"))
    code = proc.popen.wait(60)
    assert code == 2
    assert f"error: CPU_BLAS={tmp_path / 'libnothing.so'}: no such file" in worker_log(proc)
    proc.stop()


@needs_openblas
def test_an_embedding_worker_runs_on_openblas_and_answers(stack, api_url, models_dir):
    """The float32 encoders of an embedding worker go to OpenBLAS the same way (same pid, re-exec)."""
    from worker_embedding.tiny import build

    model = "tiny-embed-openblas"
    if not (models_dir / model).exists():
        build(models_dir / model)
    proc = stack.start_embedding_worker(model, CPU_BLAS="auto")
    try:
        assert re.search(rf"CPU BLAS: {re.escape(str(OPENBLAS))}", worker_log(proc)), worker_log(proc)
        assert mapped(proc.pid, "libopenblas")
        answer = client_for(api_url).embeddings.create(model=model, input=["a red square", "a blue circle"])
        assert [item.index for item in answer.data] == [0, 1] and len(answer.data[0].embedding) > 0
    finally:
        proc.stop()
