"""Unit tests of planning network access: modes, host lists, APIs, secrets and the broker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.broker.dns import RCODE_REFUSED, query_name, refusal
from orchestrator.errors import ManifestError, PlanError
from orchestrator.plan import HostFacts, RunPlan, SecuritySpec
from orchestrator.profiles import PLACEHOLDER_KEY
from orchestrator.render import plan_text
from tests.unit.conftest import agent, manifest_data

SECRET = "sk-unit-secret-value"
API = {
    "upstream": "http://mock-api:8080",
    "base_url_env": "ANTHROPIC_BASE_URL",
    "secret": "ANTHROPIC_API_KEY",
    "header": "x-api-key",
    "placeholder_env": ["ANTHROPIC_API_KEY"],
}
PlanFor = Callable[..., RunPlan]


def allowlist_agent(**fields: Any) -> dict[str, Any]:
    return agent("caller", network="allowlist", apis={"anthropic": API}, **fields)


def with_key(make_facts: Callable[..., HostFacts], **overrides: Any) -> HostFacts:
    return make_facts(environment={"ANTHROPIC_API_KEY": SECRET}, **overrides)


def test_network_none_by_default(plan_for: PlanFor, source_dir: Path) -> None:
    plan = plan_for(manifest_data(source_dir))

    assert plan.broker is None
    assert plan.agents[0].egress is None
    assert plan.agents[0].container.security.network_mode == "none"


def test_allowlist_agent_gets_own_network(
    plan_for: PlanFor, source_dir: Path, make_facts: Callable[..., HostFacts]
) -> None:
    plan = plan_for(manifest_data(source_dir, agents=[allowlist_agent(), agent("other", network="allowlist")]),
                    facts=with_key(make_facts))

    networks = [item.container.security.network_mode for item in plan.agents]
    assert networks[0] != networks[1]
    assert all(network.endswith(f"--egress-{item.name}") for network, item in zip(networks, plan.agents, strict=True))
    assert plan.broker is not None
    assert plan.broker.upstream_kind == "bridge"


def test_agent_env_has_placeholder_not_secret(
    plan_for: PlanFor, source_dir: Path, make_facts: Callable[..., HostFacts]
) -> None:
    plan = plan_for(manifest_data(source_dir, agents=[allowlist_agent()]), facts=with_key(make_facts))

    container = plan.agents[0].container
    assert container.fixed_env["ANTHROPIC_API_KEY"] == PLACEHOLDER_KEY
    assert container.fixed_env["ANTHROPIC_BASE_URL"] == "http://orchestrate-broker:3128/anthropic"
    assert container.fixed_env["HTTPS_PROXY"] == "http://orchestrate-broker:3128"
    assert "ANTHROPIC_API_KEY" not in container.env_names
    assert SECRET not in plan.model_dump_json()
    assert SECRET not in plan_text(plan)


def test_missing_secret_variable_is_plan_error(plan_for: PlanFor, source_dir: Path) -> None:
    with pytest.raises(PlanError) as caught:
        plan_for(manifest_data(source_dir, agents=[allowlist_agent()]))

    assert "variable ANTHROPIC_API_KEY, which is not set" in str(caught.value)
    assert caught.value.exit_code == 2


def test_secret_from_named_variable(
    plan_for: PlanFor, source_dir: Path, make_facts: Callable[..., HostFacts]
) -> None:
    data = manifest_data(source_dir, agents=[allowlist_agent(secrets={"ANTHROPIC_API_KEY": {"env": "TEAM_KEY"}})])

    plan = plan_for(data, facts=make_facts(environment={"TEAM_KEY": SECRET}))

    assert plan.agents[0].egress is not None
    assert plan.agents[0].egress.secrets[0].env == "TEAM_KEY"


def test_missing_secret_file_is_plan_error(
    plan_for: PlanFor, source_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-key"
    data = manifest_data(source_dir, agents=[allowlist_agent(secrets={"ANTHROPIC_API_KEY": {"file": str(missing)}})])

    with pytest.raises(PlanError) as caught:
        plan_for(data)

    assert f"the file {missing} for secret ANTHROPIC_API_KEY is missing" in str(caught.value)


def test_secret_file_records_path_only(plan_for: PlanFor, source_dir: Path, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(SECRET + "\n", encoding="utf-8")
    data = manifest_data(source_dir, agents=[allowlist_agent(secrets={"ANTHROPIC_API_KEY": {"file": str(key)}})])

    plan = plan_for(data)

    assert plan.agents[0].egress is not None
    assert plan.agents[0].egress.secrets[0].file == key
    assert SECRET not in plan.model_dump_json()


def test_secret_in_agent_env_rejected(
    plan_for: PlanFor, source_dir: Path, make_facts: Callable[..., HostFacts]
) -> None:
    data = manifest_data(source_dir, agents=[allowlist_agent(env=["ANTHROPIC_API_KEY"])])

    with pytest.raises(PlanError, match="secret that the egress broker adds"):
        plan_for(data, facts=with_key(make_facts))


@pytest.mark.parametrize("fields", [
    # The secret's source variable, not its name, is what carries the key into the container.
    {"secrets": {"ANTHROPIC_API_KEY": {"env": "TEAM_KEY"}}, "env": ["TEAM_KEY"]},
    # Another variable with the same value.
    {"env": ["KEY_COPY"]},
])
def test_secret_source_in_agent_env_rejected(
    plan_for: PlanFor, source_dir: Path, make_facts: Callable[..., HostFacts], fields: dict[str, Any]
) -> None:
    data = manifest_data(source_dir, agents=[allowlist_agent(**fields)])
    facts = make_facts(environment={"ANTHROPIC_API_KEY": SECRET, "TEAM_KEY": SECRET, "KEY_COPY": SECRET})

    with pytest.raises(PlanError, match="carries a secret that the egress broker adds") as caught:
        plan_for(data, facts=facts)

    assert caught.value.exit_code == 2
    assert SECRET not in str(caught.value)


def test_secret_in_defaults_env_rejected(
    plan_for: PlanFor, source_dir: Path, make_facts: Callable[..., HostFacts]
) -> None:
    data = manifest_data(source_dir, defaults={"env": ["ANTHROPIC_API_KEY"]}, agents=[allowlist_agent()])

    with pytest.raises(PlanError, match="defaults.env"):
        plan_for(data, facts=with_key(make_facts))


def test_secret_file_in_source_rejected(plan_for: PlanFor, source_dir: Path) -> None:
    key = source_dir / "api-key.txt"
    key.write_text(SECRET + "\n", encoding="utf-8")
    data = manifest_data(source_dir, agents=[allowlist_agent(secrets={"ANTHROPIC_API_KEY": {"file": str(key)}})])

    with pytest.raises(PlanError, match="inside the source folder"):
        plan_for(data)


def test_deny_removes_allowed_host(
    plan_for: PlanFor, source_dir: Path, make_facts: Callable[..., HostFacts]
) -> None:
    data = manifest_data(
        source_dir,
        defaults={"egress": {"allow": ["a.example.test:443", "b.example.test:443"]}},
        agents=[allowlist_agent(egress={"allow": ["c.example.test:443"], "deny": ["b.example.test"]})],
    )

    plan = plan_for(data, facts=with_key(make_facts))

    egress = plan.agents[0].egress
    assert egress is not None
    assert egress.allow == ("a.example.test:443", "c.example.test:443")
    assert egress.deny == ("b.example.test",)


def test_allow_private_is_a_weakening(
    plan_for: PlanFor, source_dir: Path, make_facts: Callable[..., HostFacts]
) -> None:
    data = manifest_data(source_dir, agents=[allowlist_agent(egress={"allow_private": ["mock-api:8080"]})])

    plan = plan_for(data, facts=with_key(make_facts))

    assert any("allow_private mock-api:8080" in item for item in plan.weakenings)
    assert "WEAKENED" in plan_text(plan)


def test_plain_http_upstream_is_a_weakening(
    plan_for: PlanFor, source_dir: Path, make_facts: Callable[..., HostFacts]
) -> None:
    plan = plan_for(manifest_data(source_dir, agents=[allowlist_agent()]), facts=with_key(make_facts))

    assert any("API anthropic upstream http://mock-api:8080 is plain HTTP" in item for item in plan.weakenings)


def test_egress_without_allowlist_rejected(plan_for: PlanFor, source_dir: Path) -> None:
    data = manifest_data(source_dir, agents=[agent("quiet", egress={"allow": ["a.example.test:443"]})])

    with pytest.raises(PlanError, match="no effect without network access"):
        plan_for(data)


def test_new_api_needs_every_field(
    plan_for: PlanFor, source_dir: Path, make_facts: Callable[..., HostFacts]
) -> None:
    data = manifest_data(source_dir, agents=[agent("caller", network="allowlist",
                                                   apis={"mine": {"upstream": "http://mock-api:8080"}})])

    with pytest.raises(PlanError, match="needs base_url_env, secret, header"):
        plan_for(data, facts=with_key(make_facts))


@pytest.mark.parametrize("entry", ["10.0.0.1", "api.example.test", "https://api.example.test:443", "*.x.test:443",
                                   "api.example.test:0", "api.example.test:70000"])
def test_invalid_allow_entry_rejected(
    load_data: Callable[[dict[str, Any]], Any], source_dir: Path, entry: str
) -> None:
    data = manifest_data(source_dir, agents=[allowlist_agent(egress={"allow": [entry]})])

    with pytest.raises(ManifestError, match="invalid (host:port|port)"):
        load_data(data)


@pytest.mark.parametrize("entry", ["169.254.169.254:80", "2130706433:80", "0x7f000001:443", "127.1:443"])
def test_ip_literal_allow_entry_rejected(
    load_data: Callable[[dict[str, Any]], Any], source_dir: Path, entry: str
) -> None:
    data = manifest_data(source_dir, agents=[allowlist_agent(egress={"allow": [entry]})])

    with pytest.raises(ManifestError, match="is an IP address; write the host's DNS name") as caught:
        load_data(data)

    assert caught.value.exit_code == 2
    assert "egress.allow" in str(caught.value)


def test_gvisor_allowlist_needs_network_runtime(
    plan_for: PlanFor, source_dir: Path, make_facts: Callable[..., HostFacts]
) -> None:
    data = manifest_data(source_dir, agents=[allowlist_agent(isolation="gvisor")])

    with pytest.raises(PlanError) as caught:
        plan_for(data, facts=with_key(make_facts, runtimes=("runc", "runsc")))

    assert "runsc-network" in str(caught.value)
    assert "--network=host" in str(caught.value)


def test_gvisor_allowlist_uses_network_runtime(
    plan_for: PlanFor, source_dir: Path, make_facts: Callable[..., HostFacts]
) -> None:
    data = manifest_data(source_dir, agents=[allowlist_agent(isolation="gvisor")])

    plan = plan_for(data, facts=with_key(make_facts, runtimes=("runc", "runsc", "runsc-network")))

    assert plan.agents[0].container.runtime == "runsc-network"


def test_missing_broker_image_is_environment_problem(
    plan_for: PlanFor, source_dir: Path, make_facts: Callable[..., HostFacts]
) -> None:
    data = manifest_data(source_dir, defaults={"image": "custom/agent:1"}, agents=[allowlist_agent()])
    facts = with_key(make_facts, images={"custom/agent:1": "sha256:" + "cd" * 32, "orchestrate/base:latest": None})

    with pytest.raises(PlanError, match="egress broker runs from orchestrate/base:latest"):
        plan_for(data, facts=facts)


@pytest.mark.parametrize("mode", ["host", "bridge", "container:abc", "orchestrate-run--upstream", "default"])
def test_security_spec_rejects_other_networks(mode: str) -> None:
    with pytest.raises(ValidationError, match="not allowed"):
        SecuritySpec(network_mode=mode)


def test_upstream_network_name_needs_internal(load_data: Callable[[dict[str, Any]], Any], source_dir: Path) -> None:
    data = manifest_data(source_dir, broker={"upstream_network_name": "mocks"}, agents=[allowlist_agent()])

    with pytest.raises(ManifestError, match="needs upstream_network: internal"):
        load_data(data)


def test_dns_refusal_repeats_question() -> None:
    query = bytes.fromhex("abcd01000001000000000000") + b"\x04leak\x07example\x04test\x00\x00\x01\x00\x01"

    answer = refusal(query)

    assert answer is not None
    assert answer[:2] == b"\xab\xcd"
    assert answer[3] & 0x0F == RCODE_REFUSED
    assert answer[2] & 0x80
    assert answer[12:] == query[12:]
    assert query_name(query) == "leak.example.test"


def test_dns_refusal_ignores_answers_and_short_packets() -> None:
    assert refusal(b"\x00" * 5) is None
    assert refusal(bytes.fromhex("abcd81800001000000000000")) is None


@pytest.mark.parametrize(("field", "value", "hint"), [
    ("upstream", "ftp://api.example.test", "an http or https URL"),
    ("header", "x api key", "a header name"),
    ("base_url_env", "BASE-URL", "a variable name"),
])
def test_bad_api_field_explained(
    load_data: Callable[[dict[str, Any]], Any], source_dir: Path, field: str, value: str, hint: str
) -> None:
    caller = agent("caller", network="allowlist", apis={"anthropic": {**API, field: value}})
    data = manifest_data(source_dir, agents=[caller])

    with pytest.raises(ManifestError) as caught:
        load_data(data)

    assert f"agents[0].apis.anthropic.{field}: invalid value '{value}'; use {hint}" in str(caught.value)
    assert "should match pattern" not in str(caught.value)


@pytest.mark.parametrize(("fields", "message"), [
    ({"apis": {"anthropic": {**API, "secret": "KEY=VALUE"}}}, "apis.anthropic.secret: invalid value 'KEY=VALUE'"),
    ({"apis": {"anthropic": {**API, "placeholder_env": ["LD_PRELOAD=x"]}}}, "invalid variable name 'LD_PRELOAD=x'"),
    ({"apis": {"a/b": API}}, "invalid API name 'a/b'"),
    ({"secrets": {"ANTHROPIC_API_KEY": {"env": "TEAM KEY"}}}, "secrets.ANTHROPIC_API_KEY.env: invalid value"),
])
def test_unanchored_names_rejected(
    load_data: Callable[[dict[str, Any]], Any], source_dir: Path, fields: dict[str, Any], message: str
) -> None:
    data = manifest_data(source_dir, agents=[agent("caller", network="allowlist", **fields)])

    with pytest.raises(ManifestError) as caught:
        load_data(data)

    assert message in str(caught.value)


def test_secret_in_other_agent_env_rejected(
    plan_for: PlanFor, source_dir: Path, make_facts: Callable[..., HostFacts]
) -> None:
    # The agent without network could leave the key in its output, where the allowlist agent reads it.
    data = manifest_data(source_dir, agents=[allowlist_agent(), agent("helper", env=["ANTHROPIC_API_KEY"])])

    with pytest.raises(PlanError, match="agents\\[1\\].env: the host variable ANTHROPIC_API_KEY carries a secret"):
        plan_for(data, facts=with_key(make_facts))
