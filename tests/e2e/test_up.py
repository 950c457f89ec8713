"""`aigw up` as a newcomer runs it: embedded Redis and PostgreSQL in an empty data dir, the
mock provider with `--demo`, the parent key printed on first start only, and nothing left
running after Ctrl-C."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import openai
import psutil
import pytest

from tests.e2e.harness import start_gateway, write_config

KEY_PATTERN = re.compile(r"sk-aig-[A-Za-z0-9_-]{32,}")


def test_up_from_empty_data_dir_then_again(tmp_path: Path) -> None:
    config_path = tmp_path / "gateway.yaml"
    data_dir = tmp_path / "data"
    config = write_config(
        config_path, mock_url=None, database_url=None, redis_url=None, data_dir=data_dir
    )

    first = start_gateway(config_path, config, "--demo")
    try:
        output = first.output()
        assert "demo" in output.lower()
        keys = KEY_PATTERN.findall(output)
        assert len(keys) == 1, output
        parent_key = keys[0]
        with openai.OpenAI(base_url=first.base_url, api_key=parent_key, max_retries=0) as client:
            reply = client.chat.completions.create(
                model="openai/gpt-5.4-mini", messages=[{"role": "user", "content": "Hi"}]
            )
        assert reply.choices[0].message.content
        children = first.children
        assert children
    finally:
        code = first.stop(signal.SIGINT)
    assert code == 0, first.output()
    assert not [child for child in children if _alive(child)], "processes left running"
    assert not _using(data_dir), "embedded services left running"

    second = start_gateway(config_path, config, "--demo")
    try:
        assert not KEY_PATTERN.findall(second.output()), "a second start must not mint a key"
        with openai.OpenAI(base_url=second.base_url, api_key=parent_key, max_retries=0) as client:
            assert client.models.list().data
        children = second.children
    finally:
        code = second.stop(signal.SIGTERM)
    assert code == 0, second.output()
    assert not [child for child in children if _alive(child)], "processes left running"
    assert not _using(data_dir), "embedded services left running"


def test_up_without_demo_says_which_provider_has_no_key(tmp_path: Path) -> None:
    config_path = tmp_path / "gateway.yaml"
    config = write_config(
        config_path,
        mock_url=None,
        database_url=None,
        redis_url=None,
        data_dir=tmp_path / "data",
        extra={"providers": {"openai": {"base_url": "http://127.0.0.1:9/v1", "api_key": ""}}},
    )
    gateway = start_gateway(config_path, config)
    try:
        key = KEY_PATTERN.findall(gateway.output())[0]
        with (
            openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0) as client,
            pytest.raises(openai.BadRequestError) as raised,
        ):
            client.chat.completions.create(
                model="openai/gpt-5.4-mini", messages=[{"role": "user", "content": "Hi"}]
            )
        assert raised.value.code == "provider_not_configured"
    finally:
        gateway.stop()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _using(folder: Path) -> list[psutil.Process]:
    """Processes whose command line names the folder (embedded PostgreSQL and Redis do)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(folder) in " ".join(process.info["cmdline"] or ()) and _alive(process):
            found.append(process)
    return found
