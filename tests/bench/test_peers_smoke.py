"""bench/peers.py cannot rot: its tiny mode (1 s rounds, kubegate + Traefik) runs end to end.

No assertion on speed (that is the bench's job, on a quiet machine): only
that every case answered 200 through the real proxies and the table and its
ratios were printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "peers.py"


def test_peers_bench_runs_in_its_tiny_mode():
    out = subprocess.run([sys.executable, str(BENCH), "--seconds", "1", "--rounds", "1", "--peers", "traefik",
                          "--no-extras"], capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "non-2xx" not in out.stdout, out.stdout  # every case was served, policies included
    number = r"\s+\d+\s+\S+ms"
    assert re.search(r"Traefik 3\.7" + number + r"\s+\d+\.\d\d\s+\d+\.\d", out.stdout), out.stdout
    assert re.search(r"kubegate, bare route" + number + r"\s+—\s+\d+\.\d", out.stdout), out.stdout
    for case in ("kubegate HS256\\+redis\\+ip", "kubegate apikey\\+redis", "Traefik ipAllowList\\+rateLimit"):
        assert re.search(case + number + r"\s+\d+\.\d\d", out.stdout), out.stdout
    assert re.search(r"kubegate HS256\+redis\+ip / Traefik ipAllowList\+rateLimit: \d+\.\d\d", out.stdout)
