"""Traces, metrics and logs of one piece of work, across every service.

One invoice created in the sandbox Intacct is charged by an "on creation"
rule. The test then reads what operators would: the spans every service
exported (one trace from the webhook to the payment posted in Intacct, with
no broken parent link), the log lines that carry that trace id, and each
service's Prometheus metrics (API calls by account and function equal to the
connector's own metering, charges by outcome, RPC latency by method and code,
sync lag, consumer lag, outbox depth, webhook requests by route).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from arbridge.connector.v1 import connector_pb2, connector_pb2_grpc
from arbridge.rules.v1 import rules_pb2, rules_pb2_grpc
from arbridge_runtime.grpc_client import service_channel
from arbridge_runtime.money import to_minor
from tests.conftest import TOKEN
from tests.e2e.test_rules import SERVICES, _create_invoice, _customers_with_currency, _rule
from tests.support.payments import (
    Payer,
    deposit_everywhere,
    eventually,
    intacct_values,
    synced_payments_suite,
)
from tests.support.suite import Suite, install_smart_events


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _metrics(http: aiohttp.ClientSession, suite: Suite, service: str) -> dict[str, float]:
    """``name{label="value",...}`` -> value, every sample the service exports."""
    async with http.get(suite.processes[service].http_base + "/metrics") as reply:
        assert reply.status == 200
        text = await reply.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def _sum(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for key, value in samples.items()
        if key.startswith(name + "{") and all(w in key for w in wanted)
    )


@pytest.mark.timeout(360)
async def test_one_trace_follows_an_invoice_from_the_webhook_to_the_posted_payment(
    tmp_path: Path, database_url: str, nats_url: str, unique: str
) -> None:
    traces = tmp_path / "traces.jsonl"
    async with (
        synced_payments_suite(
            tmp_path,
            database_url,
            nats_url,
            unique,
            customers=6,
            invoices=40,
            services=SERVICES,
            service_extra={
                "ARBRIDGE_RULES_TICK_SECONDS": "0.2",
                "ARBRIDGE_TRACE_FILE": str(traces),
            },
        ) as suite,
        aiohttp.ClientSession() as http,
    ):
        rules = rules_pb2_grpc.RulesServiceStub(service_channel(suite.target("rules"), TOKEN))
        payer = Payer(suite, http, suite.target("payments"))
        await install_smart_events(http, suite)
        await deposit_everywhere(payer, suite)
        customer, currency = (await _customers_with_currency(suite))[0]
        await payer.add_card(customer, "4242424242424242")
        await rules.CreateRule(
            rules_pb2.CreateRuleRequest(
                rule=_rule("charge new invoices", currency, conditions={"customer_ids": [customer]})
            )
        )
        created = await _create_invoice(http, suite, customer, "42.00", f"OBS-{unique}")

        async def applied() -> bool:
            found = await intacct_values(
                http, suite.sandbox_admin, suite.sandbox["company_id"], "ARINVOICE"
            )
            return to_minor(found[created]["TRX_TOTALDUE"], currency) == 0

        assert await eventually(applied, timeout=60), "the auto charge was not applied in Intacct"

        # -- the trace -----------------------------------------------------------------
        def charge_trace() -> list[dict[str, Any]]:
            spans = _spans(traces)
            charge = [
                s
                for s in spans
                if s["name"] == "rules.charge"
                and s["attributes"].get("arbridge.invoice") == created
            ]
            if not charge:
                return []
            trace_id = charge[0]["trace_id"]
            found = [s for s in spans if s["trace_id"] == trace_id]
            # Complete once the posting's call to the connector and every span's parent
            # have been exported (each process exports on its own schedule).
            posted = any(s["name"].endswith("ConnectorService/PostArPayment") for s in found)
            ids = {s["span_id"] for s in found}
            whole = all(not s["parent_span_id"] or s["parent_span_id"] in ids for s in found)
            return found if posted and whole else []

        async def exported() -> list[dict[str, Any]]:
            return charge_trace()

        trace = await eventually(exported, timeout=30)
        assert trace, "no complete trace of the charge was exported:\n" + "\n".join(
            sorted({s["name"] for s in _spans(traces)})
        )
        by_id = {s["span_id"]: s for s in trace}
        roots = [s for s in trace if not s["parent_span_id"]]
        assert len(roots) == 1, [s["name"] for s in roots]
        root = roots[0]
        # The trace starts where the smart event entered arbridge.
        assert root["service"] == "arbridge-gateway"
        assert root["kind"] == "SERVER"
        assert root["name"] == "POST /v1/intacct/{account_id}/{token}"
        assert root["attributes"]["http.response.status_code"] == 202
        # No broken link: every span's parent is in the trace.
        for span in trace:
            assert not span["parent_span_id"] or span["parent_span_id"] in by_id, span["name"]

        def path_to_root(span: dict[str, Any]) -> list[str]:
            names = [f"{span['service']}:{span['name']}"]
            while span["parent_span_id"]:
                span = by_id[span["parent_span_id"]]
                names.append(f"{span['service']}:{span['name']}")
            return names[::-1]

        posting = next(s for s in trace if s["name"] == "payments.post")
        chain = path_to_root(posting)
        print("webhook to posted payment:\n  " + "\n  ".join(chain))
        # webhook -> sync's consumer (NATS headers) -> rules' consumer of the AR event that
        # scheduled the charge (outbox headers; the invoice's or its customer's change,
        # whichever came last) -> the charge (schedule row) -> payments over gRPC ->
        # posting (charge row).
        expected = [
            r"arbridge-gateway:POST /v1/intacct/\{account_id\}/\{token\}",
            r"arbridge-sync:intacct\.events\.acme process",
            r"arbridge-rules:ar\.(invoice|customer)\.(created|updated) process",
            r"arbridge-rules:rules\.charge",
            r"arbridge-payments:arbridge\.payments\.v1\.PaymentsService/ChargeInvoices",
            r"arbridge-payments:payments\.post",
        ]
        assert len(chain) == len(expected), chain
        for step, pattern in zip(chain, expected, strict=True):
            assert re.fullmatch(pattern, step), (step, chain)
        services = {s["service"] for s in trace}
        assert services == {f"arbridge-{n}" for n in SERVICES}, services
        names = {s["name"] for s in trace}
        assert "cards POST" in names  # the card gateway call, as a client span
        assert any(n.startswith("intacct ") and "create" in n for n in names), names
        assert all(s["status"] != "ERROR" for s in trace if s["name"] != "rules.charge")

        # -- log lines carry the trace ---------------------------------------------------
        trace_id = root["trace_id"]
        lines = [
            json.loads(line)
            for name in ("payments", "rules")
            for line in suite.processes[name].logs().splitlines()
            if line.startswith("{") and trace_id in line
        ]
        events = {(line["service"], line["msg"]) for line in lines}
        assert ("payments", "charge.finished") in events, events
        assert ("payments", "posting.posted") in events, events

        # -- metrics ---------------------------------------------------------------------
        connector = await _metrics(http, suite, "connector")
        channel = service_channel(suite.target("connector"), TOKEN)
        usage = await connector_pb2_grpc.ConnectorServiceStub(channel).GetApiUsage(
            connector_pb2.GetApiUsageRequest(account_id="acme")
        )
        await channel.close(None)
        metered: dict[str, int] = defaultdict(int)
        for row in usage.rows:
            metered[row.function] += row.calls
        exported_calls = {
            fn: int(_sum(connector, "arbridge_intacct_api_calls_total", function=fn))
            for fn in metered
        }
        # The connector started with this test's account: the counter and the
        # billing meter must agree call for call.
        assert exported_calls == dict(metered), (exported_calls, dict(metered))
        assert usage.total_calls > 0

        payments = await _metrics(http, suite, "payments")
        assert _sum(payments, "arbridge_charges_total", outcome="succeeded", source="rule") == 1
        assert _sum(payments, "arbridge_charges_total", outcome="declined") == 0
        assert (
            _sum(
                payments,
                "arbridge_rpc_duration_seconds_count",
                method="/arbridge.payments.v1.PaymentsService/ChargeInvoices",
                code="OK",
            )
            == 1
        )
        rules_metrics = await _metrics(http, suite, "rules")
        assert _sum(rules_metrics, "arbridge_messages_handled_total", outcome="handled") > 0
        assert any(k.startswith("arbridge_consumer_pending_messages{") for k in rules_metrics)
        sync = await _metrics(http, suite, "sync")
        assert _sum(sync, "arbridge_sync_lag_seconds_count", object="ARINVOICE") >= 1
        assert any(k.startswith("arbridge_outbox_depth{") for k in sync)
        gateway = await _metrics(http, suite, "gateway")
        assert (
            _sum(
                gateway,
                "arbridge_http_request_duration_seconds_count",
                route="/v1/intacct/{account_id}/{token}",
                status="202",
            )
            >= 1
        )
        # Route templates, never paths: the URL token is nowhere in the metrics or spans.
        async with http.get(suite.processes["gateway"].http_base + "/metrics") as reply:
            text = await reply.text()
        for span in _spans(traces):
            assert "/v1/intacct/acme/" not in json.dumps(span)
        assert "/v1/intacct/acme/" not in text
