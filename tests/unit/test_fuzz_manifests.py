"""Property-based: ``kubegate validate`` on random and hostile YAML (bounded examples).

Whatever the file holds (random text, random kubegate-shaped objects with random field values,
deep nesting, alias bombs, Python tags, huge numbers), validate exits 0 or 1, every line it
prints to stderr is one line naming the file, and it never raises (a traceback).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubegate.cli import main
from kubegate.spec import API_VERSION, KINDS

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c,
                                                                                    max_size=4), max_leaves=25)
FIELDS = ["path", "hosts", "methods", "backends", "requestSchema", "auth", "ipFilter", "retries", "timeouts",
          "limits", "targetRefs", "secretRef", "expiresAt", "routes", "hostnames", "certificate", "clientAuth",
          "rewrite", "maxBodyBytes", "rateLimit"]
specs = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)
objects = st.builds(
    lambda kind, name, namespace, spec, api: {"apiVersion": api, "kind": kind,
                                              "metadata": {"name": name, "namespace": namespace}, "spec": spec},
    st.sampled_from([*KINDS, "Secret", "Service", "Nope"]), st.text(max_size=20) | st.integers(),
    st.text(max_size=10) | st.none(), specs | values, st.sampled_from([API_VERSION, "v1", "kubegate.dev/v9", 7]))
documents = st.one_of(
    st.lists(objects, max_size=3).map(lambda objs: yaml.safe_dump_all(objs)),
    st.text(max_size=400),
    st.integers(1, 3000).map(lambda n: "spec: " + "[" * n),
    st.integers(1, 3000).map(lambda n: "kind: GatewayRoute\nspec:\n  requestSchema: " + "[" * n + "]" * n),
    st.integers(1, 200).map(lambda n: "apiVersion: kubegate.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: a}\n"
                                      "spec:\n  path: /x\n  backends: [{url: 'http://a'}]\n  requestSchema: "
                                      + '{"items": ' * n + "{}" + "}" * n),
    st.sampled_from([
        ("a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b]\n"
         "d: [*c, *c, *c, *c, *c, *c, *c, *c]\n"),
        "kind: GatewayRoute\nmetadata: &m {name: a, x: *m}\nspec: &s {path: /x, self: *s}\n",
        "!!python/object/apply:os.system ['true']\n",
        "kind: ApiKey\nmetadata: {name: k}\nspec: {secretRef: {name: s, key: k}, expiresAt: 99999-99-99}\n",
        "kind: GatewayRoute\nmetadata: {name: a}\nspec: {path: /x, maxBodyBytes: " + "9" * 5000 + "}\n",
        "\x00\xff", "---\n---\n...\n", "kind: [GatewayRoute]\n", "? [a]\n: b\n",
    ]),
)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=documents)
def test_validate_never_raises_and_prints_one_line_per_problem(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "manifests.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["validate", "-f", str(path)])
    assert code in (0, 1), code
    assert "Traceback" not in err.getvalue()
    lines = err.getvalue().splitlines()
    for line in lines:
        assert line.startswith((str(path), "warning: ", f"{len(lines) - 1} problem(s) found")) or \
            line.endswith("problem(s) found"), line
        assert len(line) < 4000
