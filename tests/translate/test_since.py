"""A Translator that re-decides only what a few changed GatewayRoutes affect (translate/since.py) gives
exactly what a fresh full translation gives, change after change, on every golden case and on inputs built
to make changed routes conflict, lose and win claims, become invalid and valid again, reference missing
Secrets and Services, and sit beside rate-limit policies, API keys and TLS policies."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from golden import cases

from kubegate.manifests import load_manifests
from kubegate.resources import SourceObject, TranslationInput, TranslationResult
from kubegate.translate import Translator, since, translate

PATHS = ["/a", "/a/:id", "/a/{x}", "/b/*rest", "/b/*tail", "/c", "/shop/orders", "/d/:id/e"]
HOSTS = [[], ["api.example.com"], ["*.example.com"], ["API.example.com", "x.test"]]
METHODS = [[], ["GET"], ["POST"], ["GET", "PUT"]]


def _same(a: TranslationResult, b: TranslationResult) -> None:
    assert a.config_json == b.config_json
    assert a.secrets_json == b.secrets_json and a.hash == b.hash
    assert a.results == b.results and list(a.results) == list(b.results)
    assert a.config.generations == b.config.generations and list(a.config.generations) == list(b.config.generations)
    assert a.warnings == b.warnings and a.certificates == b.certificates
    assert a.backend_services == b.backend_services and a.backend_urls == b.backend_urls


def _route_spec(rng: random.Random) -> dict:
    spec: dict = {"path": rng.choice(PATHS), "hosts": rng.choice(HOSTS), "methods": rng.choice(METHODS)}
    backend = rng.random()
    if backend < 0.5:
        spec["backends"] = [{"url": f"http://backend-{rng.randint(0, 3)}.test:80"}]
    elif backend < 0.8:
        spec["backends"] = [{"service": rng.choice(["orders", "catalog", "missing"]), "port": 80}]
    else:
        spec["backends"] = "not a list"  # invalid
    if rng.random() < 0.2:
        spec["auth"] = {"methods": ["jwt"], "jwt": {"algorithms": ["HS256"],
                                                    "secretRef": {"name": rng.choice(["hmac", "gone"]), "key": "s"}}}
    return spec


def _changes(base: TranslationInput, seed: int, steps: int = 25):
    """Inputs that change one to three routes at a time (sometimes something else: the full path)."""
    rng = random.Random(seed)
    objects = list(base.objects)
    routes = [i for i, o in enumerate(objects) if o.kind == "GatewayRoute"]
    for step in range(steps):
        if rng.random() < 0.1 or not routes:  # an added route: not for since.again
            objects.append(SourceObject(kind="GatewayRoute", namespace="shop", name=f"added{step}",
                                        creation_timestamp=f"2026-01-02T00:00:{step:02d}Z", spec=_route_spec(rng)))
            routes.append(len(objects) - 1)
        else:
            for i in rng.sample(routes, min(len(routes), rng.randint(1, 3))):
                old = objects[i]
                objects[i] = old.model_copy(update={"generation": old.generation + 1, "spec": _route_spec(rng)})
        yield base.model_copy(update={"objects": tuple(objects)})


def _base_with_routes(base: TranslationInput, count: int, seed: int) -> TranslationInput:
    rng = random.Random(seed)
    extra = tuple(SourceObject(kind="GatewayRoute", namespace=rng.choice(["shop", "kubegate-system"]), name=f"r{i}",
                               creation_timestamp=f"2026-01-01T00:00:{rng.randint(0, 59):02d}Z", spec=_route_spec(rng))
                  for i in range(count))
    return base.model_copy(update={"objects": (*base.objects, *extra)})


def _input(paths: list[Path]) -> TranslationInput:
    loaded = load_manifests([str(p) for p in paths])
    return TranslationInput(objects=tuple(loaded.objects), secrets=loaded.secrets, services=loaded.services)


def _run(base: TranslationInput, seed: int, monkeypatch) -> int:
    taken = []
    again = since.again

    def counting(*args):
        done = again(*args)
        taken.append(done is not None)
        return done

    monkeypatch.setattr("kubegate.translate.translator.again", counting)
    translator = Translator()
    _same(translator.translate(base), translate(base))
    for step, inp in enumerate(_changes(base, seed)):
        got = translator.translate(inp)
        try:
            _same(got, translate(inp))
        except AssertionError:
            pytest.fail(f"step {step} (seed {seed}) differs from a full translation")
        # the same input again: nothing changed, nothing re-decided
        _same(translator.translate(inp), got)
    return sum(taken)


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("seed", range(12))
def test_changes_among_the_examples_translate_as_a_full_translation(seed, monkeypatch):
    base = _base_with_routes(_input([EXAMPLES]), 40, seed)
    assert _run(base, seed, monkeypatch) > 20  # the incremental path was taken most of the time


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name)
def test_changes_on_every_golden_case_translate_as_a_full_translation(case, monkeypatch):
    _run(_input(case.inputs), 1, monkeypatch)


def test_a_change_of_anything_but_routes_translates_everything(monkeypatch):
    base = _base_with_routes(_input([EXAMPLES]), 10, 3)
    translator = Translator()
    translator.translate(base)
    assert since.again(translator._previous, base.model_copy(update={"secrets": {}}), (), None) is None
    assert since.again(translator._previous, base.model_copy(update={"services": {}}), (), None) is None
    policy = next(i for i, o in enumerate(base.objects) if o.kind == "RateLimitPolicy")
    objects = list(base.objects)
    objects[policy] = objects[policy].model_copy(update={"generation": 5})
    assert since.again(translator._previous, base.model_copy(update={"objects": tuple(objects)}), (), None) is None
    route = next(i for i, o in enumerate(base.objects) if o.kind == "GatewayRoute")
    objects = list(base.objects)
    objects[route] = objects[route].model_copy(update={"creation_timestamp": "2030-01-01T00:00:00Z"})
    assert since.again(translator._previous, base.model_copy(update={"objects": tuple(objects)}), (), None) is None
    doubled = base.model_copy(update={"objects": (*base.objects[1:], base.objects[1])})
    assert since.again(translator._previous, doubled, (), None) is None
