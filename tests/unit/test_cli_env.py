"""Every flag of every command also comes from KUBEGATE_<FLAG> (API.md); the command line wins."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kubegate.cli import apply_env_defaults, build_parser, env_name
from kubegate.errors import UserError


def parse(env: dict[str, str], *argv: str):
    parser = build_parser()
    apply_env_defaults(parser, env)
    return parser.parse_args(argv)


def test_flags_come_from_the_environment_and_the_command_line_wins():
    env = {"KUBEGATE_REDIS_URL": "redis://:pw@r:6379/0", "KUBEGATE_HTTP_PORT": "8181",
           "KUBEGATE_TRUSTED_PROXY": "10.0.0.0/8, 192.168.0.0/16", "KUBEGATE_NAMESPACE": "gw"}
    args = parse(env, "dataplane")
    assert (args.redis_url, args.http_port, args.trusted_proxies, args.namespace) == (
        "redis://:pw@r:6379/0", 8181, ["10.0.0.0/8", "192.168.0.0/16"], "gw")
    assert parse(env, "dataplane", "--http-port", "9999", "--redis-url", "redis://x").http_port == 9999
    assert parse(env, "dataplane", "--redis-url", "redis://x").redis_url == "redis://x"
    assert parse({"KUBEGATE_SHOW_SECRETS": "true", "KUBEGATE_FILENAME": "a.yaml,b"}, "render").show_secrets is True
    assert parse({"KUBEGATE_FILENAME": "a.yaml,b"}, "validate").paths == [["a.yaml", "b"]]  # -f not required then
    assert parse({"KUBEGATE_SHOW_SECRETS": "no"}, "render", "-f", "x").show_secrets is False


def test_every_flag_of_every_command_has_its_variable_in_the_help():
    parser = build_parser()
    apply_env_defaults(parser, {})
    subparsers = next(a for a in parser._actions if a.choices and not a.option_strings)
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if env_name(action):
                assert f"[env {env_name(action)}]" in action.help, (name, action.dest)


@pytest.mark.parametrize(("env", "error"), [
    ({"KUBEGATE_HTTP_PORT": "eighty"}, "kubegate: KUBEGATE_HTTP_PORT: invalid value 'eighty'"),
    ({"KUBEGATE_SHOW_SECRETS": "maybe"}, "kubegate: KUBEGATE_SHOW_SECRETS: expected true or false, not 'maybe'"),
])
def test_a_bad_variable_is_one_line(env, error):
    with pytest.raises(UserError):
        apply_env_defaults(build_parser(), env)
    out = subprocess.run([sys.executable, "-m", "kubegate.cli", "render", "-f", "x"], check=False,
                         capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", **env, "PYTHONPATH": ":".join(sys.path)})
    assert (out.returncode, out.stderr.strip()) == (1, error)
