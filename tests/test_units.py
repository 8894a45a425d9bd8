"""Pure pieces, called directly: model references and stop-sequence matching."""

from __future__ import annotations

import pytest

from contract.modelref import InvalidModelRef, parse_model_ref
from runtime.stops import StopMatcher


@pytest.fixture
def roots(tmp_path):
    root = tmp_path / "models"
    (root / "local").mkdir(parents=True)
    (root / "org" / "nested").mkdir(parents=True)
    (root / "half.partial").mkdir()
    (tmp_path / "secret").mkdir()
    (root / "sneaky").symlink_to(tmp_path / "secret")
    (root / "alias").symlink_to(root / "local")
    return [root]


def test_local_names_and_paths_inside_a_root(roots):
    assert parse_model_ref("local", roots).local_path == roots[0] / "local"
    assert parse_model_ref("alias", roots).local_path == roots[0] / "local"
    assert parse_model_ref("org/nested", roots).local_path == roots[0] / "org" / "nested"
    absolute = str(roots[0] / "local")
    # Hardening II, case 3: one canonical name per local model, never a server path.
    assert parse_model_ref(absolute, roots).name == "local"


@pytest.mark.parametrize("spelling", ["local", "./local", ".//local", "local/", "./local//", "{root}/local",
                                      "{root}//local/"])  # fmt: skip
def test_every_spelling_of_a_local_model_is_one_name(roots, spelling):
    ref = parse_model_ref(spelling.format(root=roots[0]), roots)
    assert ref.name == "local" and ref.local_path == roots[0] / "local"
    assert parse_model_ref("./org//nested/", roots).name == "org/nested"
    assert parse_model_ref("alias", roots).name == "alias"  # a symlinked alias is a model id of its own


def test_hub_ids_when_no_local_directory_matches(roots):
    ref = parse_model_ref("mlx-community/Qwen2.5-0.5B-Instruct-4bit", roots)
    assert ref.repo_id == "mlx-community/Qwen2.5-0.5B-Instruct-4bit" and ref.local_path is None


@pytest.mark.parametrize(
    "bad, words",
    [
        ("", "1 to"),
        ("x" * 300, "1 to"),
        ("../local", ".."),
        ("org/../../etc", ".."),
        ("/etc", "inside the model roots"),
        ("https://huggingface.co/x/y", "URL"),
        ("file:///etc/passwd", "URL"),
        ("a;rm -rf /", "characters"),
        ("$(id)", "characters"),
        ("sneaky", "outside the model roots"),
        ("nothing-here", "neither"),
        ("a/b/c", "neither"),
        ("half.partial", "unfinished"),
    ],
)
def test_refused_references(roots, bad, words):
    with pytest.raises(InvalidModelRef) as caught:
        parse_model_ref(bad, roots)
    assert words in str(caught.value)
    assert str(roots[0]) not in str(caught.value)


def run(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_stop_split_across_tokens_never_reaches_the_output():
    assert run(StopMatcher(["END"]), ["Hello E", "N", "D and more"]) == ("Hello ", True)


def test_false_start_of_a_stop_is_released():
    assert run(StopMatcher(["END"]), ["Hello EN", "d then"]) == ("Hello ENd then", False)


def test_earliest_of_several_stops_wins():
    assert run(StopMatcher(["b", "abc"]), ["xxab", "c"]) == ("xxa", True)


def test_held_back_text_is_minimal():
    matcher = StopMatcher(["###"])
    assert matcher.feed("one #") == ("one ", False)
    assert matcher.feed("x") == ("#x", False)


def test_without_stops_everything_passes_through():
    assert StopMatcher([]).feed("abc") == ("abc", False)


def test_every_refusal_a_worker_can_make_has_a_4xx_status():
    """Hardening III, case 5: a batch line the worker refused read `status_code: 500` (its code,
    `invalid_response_format`, had no status); every RequestRejected code now maps to a 4xx."""
    import mlx_common.grammar  # noqa: F401  (defines InvalidGrammar)
    import worker_embedding.engine  # noqa: F401  (defines InputTooLong)
    import worker_text.memory  # noqa: F401  (defines KVBudgetExceeded)
    import worker_vision.jobs  # noqa: F401  (defines ImageUnreadable)
    from contract.results import http_status
    from runtime.rejections import RequestRejected

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    codes = {RequestRejected.code, *(sub.code for sub in subclasses(RequestRejected))}
    assert {"invalid_value", "context_length_exceeded", "invalid_response_format", "invalid_image",
            "kv_budget_exceeded"} <= codes  # fmt: skip
    assert all(400 <= http_status(code) < 500 for code in codes), {c: http_status(c) for c in codes}
