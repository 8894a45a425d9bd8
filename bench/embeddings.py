"""Embedding throughput: inputs/s for one request of 1, 32 and 1,024 inputs and for 16
concurrent clients sending requests of 32 inputs, through our whole stack (HTTP → gunicorn →
Redis queue → embedding worker → back) and through a plain loop over the same MLX model in
this process, side by side, shape by shape, in one run.

    .venv/bin/python bench/embeddings.py [--model all-MiniLM-L6-v2] [--models-dir var/models]
                                         [--rounds 1] [--requests-per-client 2] [--quick]

The in-process side is what a script would do without a server: tokenize, sort by length,
`Encoder.embed` in batches of up to 64 inputs (the engine's MAX_BATCH). For the concurrent
shape it embeds all the clients' inputs in one loop. `vs_in_process` (ours / in-process) is
then what the queue, HTTP and the worker's scheduling cost or gain.

Inputs are sentences of 8 to 40 words drawn from a seeded generator, different in every
request (nothing is cached anywhere on the way, but a bench should not rely on it). Each shape
starts with an unmeasured round on each side (CUDA compiles kernels per new batch shape), whose
vectors are compared: both sides must serve the same model. --quick (1, 8 and 64 inputs, 4
clients) is a smoke run; on a CPU, all-MiniLM-L6-v2 takes seconds per batch, so the full run
is for a GPU. A missing all-MiniLM-L6-v2 is imported (worker_embedding.models install-default),
a missing tiny-embed built (worker_embedding.tiny). Prints a table and writes
bench/results/embeddings-<model>-<time>.json whose rows carry `shape`, `inputs_per_request`,
`clients`, `server`, `inputs_per_s` and `vs_in_process`.
"""

from __future__ import annotations

import argparse
import base64
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, ROOT, bench_stack, device_name, write_result

from contract.settings import Settings
from worker_embedding.tiny import CORPUS

WORDS = sorted({w for line in CORPUS for w in re.findall(r"\b[a-z]{2,}\b", line.lower())})
"""The plain words of tiny-embed's corpus: whole tokens for tiny-embed as for a real vocabulary,
so a sentence has about as many tokens for either model, well within its limit."""
BATCH = 64
"""Inputs per forward pass on the in-process side: the engine's MAX_BATCH."""


def sentences(tag: str, count: int) -> list[str]:
    """`count` sentences of 8 to 40 words, the same for the same tag on both sides."""
    rng = random.Random(tag)
    return [" ".join(rng.choices(WORDS, k=rng.randint(8, 40))).capitalize() + "." for _ in range(count)]


def workload(tag: str, size: int, clients: int, per_client: int) -> list[list[list[str]]]:
    """Each client's requests, each a list of `size` texts of its own."""
    return [[sentences(f"{tag}/{c}/{r}", size) for r in range(per_client)] for c in range(clients)]


def in_process(encoder, texts: list[str]) -> tuple[np.ndarray, int]:
    """The plain loop: (vectors in input order, tokens)."""
    ids = encoder.tokenize(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths pad least
    out = np.empty((len(ids), encoder.dimensions), np.float32)
    for start in range(0, len(order), BATCH):
        chunk = order[start : start + BATCH]
        out[chunk] = np.array(encoder.embed([ids[i] for i in chunk]))
    return out, sum(map(len, ids))


def post(session: requests.Session, url: str, model: str, texts: list[str]) -> tuple[float, int, np.ndarray]:
    """One request as an OpenAI client sends it (base64, the openai package's default):
    (seconds, tokens, vectors)."""
    start = time.perf_counter()
    response = session.post(
        url + "/v1/embeddings", json={"model": model, "input": texts, "encoding_format": "base64"}, timeout=3600
    )
    response.raise_for_status()
    body = response.json()
    vectors = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body["data"]])
    seconds = time.perf_counter() - start
    if len(vectors) != len(texts):
        raise RuntimeError(f"sent {len(texts)} inputs, got {len(vectors)} vectors")
    return seconds, body["usage"]["prompt_tokens"], vectors


def through_stack(url: str, model: str, work: list[list[list[str]]]) -> dict:
    """Every client in a thread of its own with a keep-alive session, started together;
    each sends its requests one after another."""
    gate = threading.Barrier(len(work))

    def client(requests_of_client: list[list[str]]) -> tuple[float, float, list]:
        session = requests.Session()
        gate.wait()
        start = time.perf_counter()
        answers = [post(session, url, model, texts) for texts in requests_of_client]
        return start, time.perf_counter(), answers

    with ThreadPoolExecutor(len(work)) as pool:
        results = list(pool.map(client, work))  # re-raises a client's failure
    answers = [a for _, _, client_answers in results for a in client_answers]
    return {
        "inputs": sum(len(a[2]) for a in answers),
        "tokens": sum(a[1] for a in answers),
        "wall_s": max(r[1] for r in results) - min(r[0] for r in results),
        "latencies": [a[0] for a in answers],
        "vectors": np.concatenate([a[2] for a in answers]),
    }


def loop_in_process(encoder, work: list[list[list[str]]]) -> dict:
    texts = [t for client in work for request in client for t in request]
    start = time.perf_counter()
    vectors, tokens = in_process(encoder, texts)
    wall = time.perf_counter() - start
    # A latency only where the loop is one request's work; the concurrent shape has none.
    single = len(work) == 1 and len(work[0]) == 1
    return {"inputs": len(texts), "tokens": tokens, "wall_s": wall, "latencies": [wall] if single else [],
            "vectors": vectors}  # fmt: skip


def measure(args, url: str, encoder, shape: dict) -> list[dict]:
    """One shape: a warm-up on each side (vectors compared), then --rounds rounds, interleaved."""
    sides = {
        "ours": lambda work: through_stack(url, args.model, work),
        "in-process": lambda work: loop_in_process(encoder, work),
    }
    key = (shape["size"], shape["clients"], shape["per_client"])
    warm = {name: run(workload(f"warm/{shape['name']}", *key)) for name, run in sides.items()}
    # Compared by cosine: the two sides batch the inputs differently, and on a GPU float32
    # matmuls run in TF32 and bfloat16 models round, so rows differ in their third digit.
    cos = float((warm["ours"]["vectors"] * warm["in-process"]["vectors"]).sum(axis=1).min())
    print(f"[{shape['name']}] warm-up done; ours vs in-process vectors: min cosine {cos:.6f}", flush=True)
    if cos < 0.999:
        raise RuntimeError(f"the worker's vectors differ from the in-process model's (cosine {cos}): another model?")
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for round_no in range(args.rounds):
        for name, run in sides.items():
            result = run(workload(f"{shape['name']}/{round_no}", *key))
            runs[name].append(result)
            print(f"[{shape['name']}] {name} round {round_no + 1}/{args.rounds}: {result['inputs']} inputs "
                  f"in {result['wall_s']:.2f} s", flush=True)  # fmt: skip
    rows = []
    for name, results in runs.items():
        inputs, wall = sum(r["inputs"] for r in results), sum(r["wall_s"] for r in results)
        latencies = [x for r in results for x in r["latencies"]]
        rows.append(
            {
                "shape": shape["name"],
                "inputs_per_request": shape["size"],
                "clients": shape["clients"],
                "requests_per_client": shape["per_client"],
                "server": name,
                "inputs": inputs,
                "tokens": sum(r["tokens"] for r in results),
                "wall_s": wall,
                "inputs_per_s": inputs / wall,
                "latency_ms_p50": 1000 * statistics.median(latencies) if latencies else None,
            }
        )
    reference = next(r["inputs_per_s"] for r in rows if r["server"] == "in-process")
    for row in rows:
        row["vs_in_process"] = row["inputs_per_s"] / reference
    return rows


def ensure_model(models_dir: Path, model: str) -> None:
    """Import all-MiniLM-L6-v2 or build tiny-embed when missing; other models must be there."""
    if (models_dir / model / "config.json").exists():
        return
    from worker_embedding.models import DEFAULT_MODEL

    if model == DEFAULT_MODEL:
        argv = ["-m", "worker_embedding.models", "install-default", "--models-dir", str(models_dir)]
    elif model == "tiny-embed":
        argv = ["-m", "worker_embedding.tiny", str(models_dir / model)]
    else:
        return  # a Hugging Face id or another root: the loader resolves it or says why not
    subprocess.run([sys.executable, *argv], check=True, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--rounds", type=int, default=1, help="measured rounds per shape and side")
    parser.add_argument("--requests-per-client", type=int, default=2, help="in the concurrent shape")
    parser.add_argument("--capacity", type=int, default=16, help="the worker's WORKER_CAPACITY")
    parser.add_argument("--quick", action="store_true", help="1, 8 and 64 inputs, 4 clients: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    sizes, clients = ((1, 8, 64), 4) if args.quick else ((1, 32, 1024), 16)
    shapes = [{"name": f"1 request x {n}", "size": n, "clients": 1, "per_client": 1} for n in sizes]
    shapes.append({"name": f"{clients} clients x {sizes[1]}", "size": sizes[1], "clients": clients,
                   "per_client": args.requests_per_client})  # fmt: skip

    args.models_dir = args.models_dir.resolve()  # the worker runs from the repository root
    args.models_dir.mkdir(parents=True, exist_ok=True)
    ensure_model(args.models_dir, args.model)
    from worker_embedding.loading import load_embedding_model

    encoder = load_embedding_model(args.model, Settings(models_dir=str(args.models_dir))).encoder
    rows = []
    with bench_stack(str(args.models_dir)) as (stack, url, env):
        stack.start_embedding_worker(args.model, WORKER_CAPACITY=args.capacity)
        print(f"worker ready for {args.model}; {len(shapes)} shapes, {args.rounds} round(s) each", flush=True)
        for shape in shapes:
            rows += measure(args, url, encoder, shape)
    report(args, rows)
    return 0


def report(args, rows: list[dict]) -> None:
    print(f"\nmodel {args.model}, {args.rounds} round(s), worker capacity {args.capacity}, on {device_name()}")
    print(f"{'shape':<18} {'server':<10} {'inputs':>6} {'tok/input':>9} {'wall s':>8} {'inputs/s':>9} "
          f"{'p50 ms':>8} {'vs in-proc':>10}")  # fmt: skip
    for row in rows:
        p50 = f"{row['latency_ms_p50']:.0f}" if row["latency_ms_p50"] is not None else "-"
        print(
            f"{row['shape']:<18} {row['server']:<10} {row['inputs']:>6} {row['tokens'] / row['inputs']:>9.1f} "
            f"{row['wall_s']:>8.2f} {row['inputs_per_s']:>9.1f} {p50:>8} {row['vs_in_process']:>10.2f}"
        )
    write_result(
        args.out,
        f"embeddings-{args.model.replace('/', '_')}" + ("-quick" if args.quick else ""),
        {
            "bench": "embeddings",
            "model": args.model,
            "quick": args.quick,
            "rounds": args.rounds,
            "capacity": args.capacity,
            "requests_per_client": args.requests_per_client,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
