"""Which objects' acknowledgement can differ when the live replicas move from one config to another
(operator/status_writer._moved): the ack pass after a change re-derives those, not all 10,000."""

from __future__ import annotations

from kubegate.operator.programmed import GenerationHistory, acknowledgement
from kubegate.operator.status_writer import _moved

from kubegate.resources import ObjectRef


def _history() -> GenerationHistory:
    history = GenerationHistory()
    history.record("a", {"GatewayRoute/ns/r1": 1, "GatewayRoute/ns/r2": 1, "ApiKey/ns/k": 3})
    history.record("b", {"GatewayRoute/ns/r1": 2, "GatewayRoute/ns/r2": 1, "GatewayRoute/ns/new": 1})
    return history


def test_only_the_objects_whose_generation_differs_between_the_two_configs_can_change():
    history = _history()
    moved = _moved({"a": 1}, {"b": 1}, history)
    assert moved == {ObjectRef("GatewayRoute", "ns", "r1"), ObjectRef("GatewayRoute", "ns", "new"),
                     ObjectRef("ApiKey", "ns", "k")}
    # and indeed every other object's acknowledgement is the same under both
    for key, generation in (("GatewayRoute/ns/r2", 1),):
        assert acknowledgement(key, generation, {"a": 1}, history) == acknowledgement(key, generation, {"b": 1},
                                                                                      history)
    assert acknowledgement("GatewayRoute/ns/r1", 2, {"a": 1}, history) != \
        acknowledgement("GatewayRoute/ns/r1", 2, {"b": 1}, history)


def test_anything_but_one_move_of_as_many_replicas_may_change_every_object():
    history = _history()
    assert _moved({"a": 1}, {"b": 2}, history) is None  # a replica more
    assert _moved({"a": 1}, {"a": 1, "b": 1}, history) is None  # two configs live
    assert _moved({}, {"b": 1}, history) is None  # the first replica
    assert _moved({"a": 1}, {"unknown": 1}, history) is None  # a config this operator did not write
    assert _moved({"": 1}, {"b": 1}, history) is None  # a replica that had no config yet
