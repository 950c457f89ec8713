"""The benchmark's smoke runs. `python -m bench --smoke`: plain Envoy and the full gateway on
this machine's PostgreSQL and Redis, with the ext_proc floor between them, ~15 s of wrk and
stream-client load. It must write a
results JSON naming both configurations, every cell valid (zero non-2xx responses, zero socket
errors), and the gateway must have metered what it served. `python -m bench soak --smoke`: two
short windows of load with extproc's memory sampled around them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(
        shutil.which("wrk") is None,
        reason="wrk is not installed (Debian: apt-get install -y wrk); the bench smoke needs it",
    ),
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL"),
        reason="the bench runs on a PostgreSQL server named by $DATABASE_URL (CI sets it), "
        "not on the suite's embedded one",
    ),
]


@pytest.mark.timeout(300)
def test_bench_smoke_run_is_valid(tmp_path: Path, database_url: str, redis_url: str) -> None:
    _run_bench(tmp_path, database_url, redis_url, "--smoke")

    [results] = tmp_path.glob("dataplane-*-smoke.json")
    result = orjson.loads(results.read_bytes())
    assert result["valid"] is True
    assert result["configurations"] == ["envoy", "floor", "gateway"]
    assert {c["config"] for c in result["cells"]} == {"envoy", "floor", "gateway"}
    for cell in result["cells"]:
        assert cell["valid"], cell
        if cell["tool"] == "wrk":
            assert cell["non_2xx"] == 0 and cell["requests"] > 0, cell
        else:
            assert cell["errors"] == 0 and cell["streams"] > 0, cell
    assert set(result["summary"]) == {"envoy", "floor", "gateway"}
    for config in ("floor", "gateway"):
        assert result["summary"][config]["json-c32"]["cpu_us_per_request"]["extproc"] > 0
    assert result["ratios"]["gateway"]["json-c32"]["to_floor"] > 0
    assert result["metering"]["ledger_rows"] >= result["metering"]["completed_requests"] > 0
    report = (tmp_path / results.name.replace(".json", ".md")).read_text()
    assert report.startswith("# aigw")
    assert "extproc CPU per streamed chunk:" in report


@pytest.mark.timeout(300)
def test_soak_smoke_run_is_valid(tmp_path: Path, database_url: str, redis_url: str) -> None:
    _run_bench(tmp_path, database_url, redis_url, "soak", "--smoke")

    [results] = tmp_path.glob("soak-*-smoke.json")
    result = orjson.loads(results.read_bytes())
    assert result["valid"] is True
    assert [w["mode"] for w in result["windows"]] == ["warm-up", "json", "stream"]
    for window in result["windows"]:
        assert window["rss_mib"]["extproc"] > 10, window  # a Python process with gRPC loaded
        assert window["rss_mib"]["envoy"] > 0 and window["rss_mib"]["controlplane"] > 0
    for window in result["windows"][1:]:
        assert window["load"]["non_2xx"] == 0 and window["load"]["requests"] > 0, window
    rss = result["extproc_rss_mib"]
    assert rss["end"] == result["windows"][-1]["rss_mib"]["extproc"]
    assert rss["growth"] == rss["end"] - rss["after_warm_up"]
    assert "extproc RSS" in (tmp_path / results.name.replace(".json", ".md")).read_text()


def _run_bench(tmp_path: Path, database_url: str, redis_url: str, *args: str) -> None:
    """`python -m bench *args` on its own database and the suite's Redis, results in
    `tmp_path`; it must exit 0."""
    database = f"aigw_bench_smoke_{os.getpid()}"
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--results", str(tmp_path),
         "--postgres", database_url, "--database", database, "--redis-url", redis_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
