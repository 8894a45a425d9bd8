"""All configuration, read from the environment in one place.

Every process (API, workers, tools) builds one `Settings` and passes it down; nothing else
reads `os.environ`. Field names map to upper-case variables (`redis_url` ← `REDIS_URL`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_REDIS_PORT = 11441
"""The embedded Redis that `make run` starts listens next to the API's port, not on 6379,
so it never collides with a Redis the user already runs."""


class Settings(BaseSettings):
    # hide_input_in_errors: a bad setting must not print the secrets around it (ADMIN_TOKEN,
    # API_KEYS, a REDIS_URL with its password) into the startup log.
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True, hide_input_in_errors=True)

    redis_url: str = f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0"
    key_prefix: str = "mis:"
    """Prefix of every key this project writes (rq keeps its own `rq:` keys)."""

    models_dir: str = "var/models"
    """Model roots, separated by os.pathsep. Local model references must lie inside one."""

    text_model: str = "SmolLM2-135M-Instruct"
    """The model `make run` starts a text worker for (named in the startup banner)."""

    host: str = "127.0.0.1"
    api_port: int = 11440
    web_concurrency: int = Field(2, ge=1)
    """gunicorn worker processes (each a gevent loop holding many streams)."""
    redis_data_dir: str = "var/redis"
    """Where the embedded Redis that `make run` starts keeps its append-only file."""

    job_timeout: int = Field(600, ge=1)
    """Seconds a chat job may run before the worker stops it (rq's job timeout)."""
    queued_ttl: int = Field(600, ge=1)
    """Seconds a job may wait in its queue before rq drops it."""
    result_ttl: int = Field(3600, ge=1)
    """Seconds an ended job's rq record and token stream are kept."""
    unstored_ttl: int = Field(300, ge=30)
    """Seconds a finished chat completion asked for without `store: true` (OpenAI's default)
    is kept — rq record and token stream — so a client whose connection broke can still read
    it (GET /v1/chat/completions/<id>); stored ones are kept RESULT_TTL. A busy server's Redis
    then holds minutes of answers, not an hour."""
    responses_ttl: int = Field(30 * 86400, ge=60)
    """Seconds a stored response of the Responses API (`store`, its default) is kept — its
    record, rq job and event stream — for retrieval, resuming and `previous_response_id`."""
    stream_maxlen: int = Field(100_000, ge=100)
    """Approximate cap on entries per token stream (one entry per engine step per job)."""
    cancel_ttl: int = Field(3600, ge=1)
    results_ttl: int = Field(7 * 86400, ge=60)
    """Seconds a document's or batch's record (status, per-page and per-line results) and a
    Batch API file are kept: long past the 1-hour job streams they are copied from."""
    batch_queued_ttl: int = Field(86400, ge=60)
    """Seconds a document page or batch line may wait in its queue (OpenAI's batch window is
    24 h); the page images' blobs live this long plus JOB_TIMEOUT."""
    max_document_bytes: int = Field(50_000_000, ge=1000)
    """Bytes per uploaded document (413 above)."""
    max_document_pages: int = Field(200, ge=1)
    """Pages per document after the `pages` range is applied (400 above)."""
    max_dpi: int = Field(300, ge=36)
    """Highest rendering resolution a document may ask for."""
    max_file_bytes: int = Field(100_000_000, ge=1000)
    """Bytes per Batch API input file (413 above)."""
    max_batch_lines: int = Field(50_000, ge=1)
    """Requests per batch (OpenAI's limit)."""

    heartbeat_interval: float = Field(1.0, gt=0)
    """Seconds between a worker's registry heartbeats."""
    worker_ttl: int = Field(4, ge=2)
    """Seconds after its last heartbeat that a worker counts as dead."""

    load_timeout: float = Field(900.0, gt=0)
    """Seconds a manager waits for a worker it started for a load (a download, a model read)
    to serve; then the load has failed: the worker is stopped and the jobs waiting for the
    model end with `model_unavailable`, so no batch or document waits on a load that hangs."""

    worker_capacity: int = Field(8, ge=1, le=256)
    """Jobs one worker runs at once in its batch (`--capacity` overrides it)."""
    prompt_cache_bytes: int = Field(512 * 1024 * 1024, ge=0)
    """Bytes of KV cache a text worker keeps for reuse by later prompts with the same prefix."""
    kv_bits: int | None = Field(None)
    """Quantize a text worker's KV cache to 8 or 4 bits (None: the model's float type): about
    half or a quarter of the memory per token, so longer prompts and more of them fit."""
    kv_group_size: int = Field(64)
    """Values per quantization group of the KV cache (32, 64 or 128; must divide the head size)."""
    worker_memory_gb: float = Field(0, ge=0)
    """Memory a text worker may use for its weights and KV caches, in GB; 0: what MLX allows on
    the device (`mx.get_memory_limit()`: Metal's recommended working set, or system memory).
    A job is admitted only when its KV (prompt + max_tokens) fits beside the running batch's."""
    prefix_routing: bool = True
    """Send a conversation's next turn to the text worker holding its prefix, when that worker
    has a free slot (contract/prefixes.py); off: every job goes to its model's shared queue."""
    prefix_ttl: int = Field(600, ge=1)
    """Seconds a worker's claim to hold a conversation prefix lasts (renewed by each turn)."""
    prompt_cache_dir: str = "var/prompt-cache"
    """Where text workers keep KV prefixes on disk, across restarts and model reloads."""
    prompt_cache_disk_gb: float = Field(10, ge=0)
    """Disk the prompt cache may use, in GB (least recently used prefixes go first); 0: off."""
    prefill_chunk: int = Field(0, ge=0, le=65536)
    """Prompt tokens a text worker prefills per engine step, between two decode steps of the
    jobs already generating, so a long prompt never stalls them (nor their cancels and
    timeouts) for more than one chunk. 0: 64 on a CPU (prefill runs ~15 tokens/s there), 512
    on a GPU."""
    cpu_blas: str = "auto"
    """The BLAS a text worker on a Linux CPU preloads in place of MLX's reference BLAS (6-28x
    faster float32 matmuls; mlx_common/cpu_blas.py): `auto`, the system's OpenBLAS when there is
    one; `off`; or a library's path (a missing file stops the worker at start)."""
    cpu_dequantize_max_gb: float = Field(2.0, ge=0)
    """On a CPU, a text worker dequantizes a quantized model to float32 when that takes at most
    this many GB (MLX's CPU quantized matmul is slow; float32 goes to the BLAS); 0: never."""
    vision_batch: bool = True
    """A vision worker decodes all its jobs in one forward pass per step (worker_vision/batch.py);
    `VISION_BATCH=0`: one pass per job, as before batching (kept to measure against)."""
    flat_decode: bool = True
    """Quantized layers see 2-D activations during batched decode (mlx_common/flat_decode.py);
    `FLAT_DECODE=0` turns it off (outputs are the same either way; only speed differs). Text and
    vision workers (the vision language model only)."""
    fast_quant: bool = True
    """On CUDA, quantized layers run products of 2-8 rows (decode) with our matrix-vector
    kernels (mlx_common/quant_kernels.py), and q/k/v and SwiGLU gate/up as one launch each
    (mlx_common/fused_decode.py), MLX's kernel otherwise; `FAST_QUANT=0` always uses MLX's
    (kept to measure against). Needs FLAT_DECODE (the same layer classes carry both)."""
    burst_gather_ms: float = Field(0.0, ge=0, le=1000)
    """An idle worker handed a burst (one admission pass of several jobs) waits this long for
    the rest of it before its first step, so a burst that reaches it in several passes is
    prefilled together; a lone request never waits. 0: off, each pass prefilled as it comes
    (docs/PERFORMANCE.md: a burst of 8 reached a 7B worker on an H200 in two passes)."""
    cudnn_attention: bool = False
    """Let MLX's CUDA attention use cuDNN (workers set MLX_CUDA_USE_CUDNN_SDPA from this). Off by
    default: MLX builds a cuDNN graph for each new prompt length it prefills (~70 ms for a 7B
    model on an H200, kept for 16 shapes), which real traffic pays on nearly every request, while
    MLX's own kernels prefill a short prompt in less; with PREFILL_CHUNK only a prompt's first
    chunk could use cuDNN anyway (docs/PERFORMANCE.md). No effect off CUDA."""

    keepalive_interval: float = Field(5.0, gt=0)
    """Seconds of silence after which the API sends an SSE `: keepalive` and re-checks the job."""
    default_max_tokens: int = Field(512, ge=1)
    """Completion length when the client names none (mlx_lm.server's default too)."""
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Request body cap (images arrive base64-encoded inside the JSON body)."""
    body_read_timeout: float = Field(30.0, gt=0)
    """Seconds a request body may take to arrive (408 after): a client that sends one byte a
    second must not hold a connection."""
    max_n: int = Field(8, ge=1, le=128)
    """Most choices (`n`) one chat or legacy completion may ask for; each is a sequence."""
    max_messages: int = Field(2048, ge=1)
    """Messages per chat request (OpenAI's limit); the model's context bounds the rest."""
    max_stop_sequences: int = Field(4, ge=1)
    """`stop` entries per request (OpenAI's limit): each is matched against every new token."""
    max_stop_length: int = Field(512, ge=1)
    """Characters per stop sequence: text that might begin one is held back until it cannot."""
    max_logit_bias: int = Field(300, ge=1)
    """`logit_bias` entries per request (OpenAI's limit)."""
    max_image_bytes: int = Field(10_000_000, ge=1000)
    """Decoded bytes per image."""
    max_embed_inputs: int = Field(2048, ge=1, le=100_000)
    """Inputs one `/v1/embeddings` request may carry (OpenAI's limit)."""
    max_images: int = Field(8, ge=1)
    """Images per request."""
    render_page_timeout: float = Field(10.0, gt=0, le=600)
    """Seconds one PDF page may take to render (pages take 7–47 ms at 150 dpi; a render bomb
    minutes): past it the renderer is killed and the document fails, naming the page."""
    max_request_pixels: int = Field(72_000_000, ge=1)
    """Pixels all of one request's images may hold together (two of the largest images):
    eight lossless 6000×6000 WebPs of 1.4 KB each cost a vision worker 17 s."""
    max_image_pixels: int = Field(36_000_000, ge=1)
    """Pixels per image, checked on the header before decoding (decompression bombs)."""
    allow_remote_images: bool = False
    """Fetch http(s) image URLs (public addresses only, no redirects); off: data URIs only."""
    remote_image_timeout: float = Field(5.0, gt=0)
    max_queue_depth: int = Field(256, ge=1)
    """Jobs waiting per queue before new requests get 429."""
    queue_depth_limits: dict[str, int] = Field(default_factory=dict)
    """Per-model overrides of max_queue_depth, as JSON: `{"SmolLM2-135M-Instruct": 32}`."""

    admin_token: str = Field("", repr=False)
    """Bearer token for /admin, /metrics and /rq. Empty: those are open only on a loopback bind."""
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    """Bearer keys accepted on /v1/*, comma-separated. With neither these nor api_keys_file,
    /v1/* is open on a loopback bind and refused on any other."""
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Host names requests may name in `Host`, comma-separated (api/origins.py). Empty: on a
    loopback bind the bound address, localhost, 127.0.0.1 and [::1]; on any other bind, any."""
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Web origins (`https://app.example`, or `*`) whose pages may call the API from a browser:
    CORS answers for them; state-changing requests from any other page's origin get 403."""
    api_keys_file: str = ""
    """A file of API keys, one per line (`#` starts a comment); re-read when it changes."""
    autoload: Literal["off", "local", "any"] = "local"
    """Which models a request may load on demand when nobody serves them (it waits in the queue
    meanwhile): `off`; `local`, directories under the model roots; `any`, Hugging Face ids too
    (then any client can make the server fetch and load any model it names)."""
    auto_load: bool = True
    """Older switch: AUTO_LOAD=false is AUTOLOAD=off."""
    max_autoloaded: int = Field(2, ge=1)
    """Models that may be loading on demand at once; a request for another gets 503 (an admin
    can still load it with /admin/load), so clients cannot start workers without limit."""

    redis_socket_timeout: float = 30.0
    """Above any blocking read we issue (XREAD BLOCK uses keepalive_interval)."""
    redis_connect_timeout: float = 2.0
    """Short, so a stopped Redis turns into a quick 503 rather than a hang."""
    redis_max_connections: int = 2000
    """Each open SSE stream holds one connection while it blocks on XREAD."""

    keep_alive: int = Field(600, ge=-1)
    """Seconds a worker that a manager starts may sit idle before it stops itself (-1: never)."""
    keep_alive_overrides: dict[str, int] = Field(default_factory=dict)
    """Per-model overrides of keep_alive, as JSON: `{"SmolLM2-135M-Instruct": -1}`."""
    manager_logs_dir: str = "var/logs"
    """Where a manager writes the output of the workers it starts, one file per start."""
    manager_gpus: str = "auto"
    """GPUs a manager pins its workers to, one worker per GPU (managers/gpus.py): `auto`, the
    NVIDIA GPUs `nvidia-smi` lists (none without it: macOS, a CPU host); `none`, no pinning;
    `0,1`, those (nvidia-smi's indices). Only those CUDA_VISIBLE_DEVICES, if set, leaves visible."""
    preload_replicas: int = Field(0, ge=0, le=64)
    """Workers a manager starts for each `--preload` model (`--replicas` overrides it); 0: one
    per GPU it pins to, or 1 where it pins to none."""
    cuda_visible_devices: str | None = Field(None, validation_alias="CUDA_VISIBLE_DEVICES")
    """CUDA's own variable as the manager was started with (None: unset): a manager pins its
    workers only to GPUs it leaves visible, and gives each worker a value of its own."""
    manager: str = Field("", validation_alias="MIS_MANAGER")
    """Set by a manager in the environment of the workers it starts: its name."""
    manager_memory_bytes: int = Field(0, ge=0, validation_alias="MIS_MANAGER_MEMORY_BYTES")
    """Tests only: a manager reports this much total and available memory instead of the
    machine's, so placement between `machines` on one host is deterministic. 0: real."""

    @field_validator("allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value):
        if isinstance(value, str):
            value = value.split(",")
        return [v.strip().rstrip("/") for v in value or [] if v and v.strip()]

    @field_validator("kv_bits", mode="before")
    @classmethod
    def _kv_bits(cls, value):
        # KV_BITS=none|""|8|4: the environment spells "no quantization" as a word.
        if value in (None, "", "none", "None", 0, "0"):
            return None
        if str(value) not in ("4", "8"):
            raise ValueError("KV_BITS must be none, 8 or 4")
        return int(value)

    @field_validator("manager_gpus", mode="before")
    @classmethod
    def _manager_gpus(cls, value):
        # One spelling per meaning: managers/gpus.py compares against "auto" and "none".
        text = str(value).strip().lower() or "auto"
        if text in ("auto", "none"):
            return text
        try:
            indices = sorted({int(part) for part in text.split(",") if part.strip()})
        except ValueError:
            indices = [-1]
        if not indices or min(indices) < 0:
            raise ValueError("MANAGER_GPUS must be auto, none or GPU indices such as 0,1")
        return ",".join(map(str, indices))

    @field_validator("kv_group_size")
    @classmethod
    def _kv_group_size(cls, value):
        if value not in (32, 64, 128):
            raise ValueError("KV_GROUP_SIZE must be 32, 64 or 128")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value):
        if isinstance(value, str):
            value = value.split(",")
        return [k.strip() for k in value or [] if k and k.strip()]

    @model_validator(mode="after")
    def _admin_token_is_no_api_key(self):
        # Two secrets, two doors: a leaked API key must never open the admin surface.
        if self.admin_token and self.admin_token in self.api_keys:
            raise ValueError("ADMIN_TOKEN must differ from every API key")
        return self

    @property
    def autoload_policy(self) -> str:
        return self.autoload if self.auto_load else "off"

    @property
    def api_keys_configured(self) -> bool:
        return bool(self.api_keys or self.api_keys_file)

    @model_validator(mode="after")
    def _streams_outlive_jobs(self):
        # Token streams get their expiry when a job starts; it must not lapse mid-job.
        if self.result_ttl < self.job_timeout:
            raise ValueError("RESULT_TTL must be at least JOB_TIMEOUT")
        return self

    def keep_alive_for(self, model_id: str) -> int:
        return self.keep_alive_overrides.get(model_id, self.keep_alive)

    def queue_depth_limit(self, model_id: str) -> int:
        return self.queue_depth_limits.get(model_id, self.max_queue_depth)

    @property
    def model_roots(self) -> list[Path]:
        return [Path(p).resolve() for p in self.models_dir.split(os.pathsep) if p]
