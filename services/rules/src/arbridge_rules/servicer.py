"""gRPC handlers of `arbridge.rules.v1.RulesService`.

Handlers translate protobuf to domain calls and back and hold no SQL.
"""

from __future__ import annotations

from typing import Any

from arbridge.common.v1 import common_pb2
from arbridge.rules.v1 import rules_pb2, rules_pb2_grpc
from arbridge_rules.explain import Insight
from arbridge_rules.rules import RuleStore, message
from arbridge_runtime.errors import InvalidArgument
from arbridge_runtime.paging import page_size


class RulesService(rules_pb2_grpc.RulesServiceServicer):
    """The rules service's gRPC API."""

    def __init__(self, store: RuleStore, insight: Insight) -> None:
        self._store = store
        self._insight = insight

    async def CreateRule(
        self, request: rules_pb2.CreateRuleRequest, context: Any
    ) -> rules_pb2.CreateRuleResponse:
        if request.rule.rule_id:
            raise InvalidArgument("rule.rule_id is assigned by the service; leave it empty")
        return rules_pb2.CreateRuleResponse(rule=message(await self._store.create(request.rule)))

    async def GetRule(
        self, request: rules_pb2.GetRuleRequest, context: Any
    ) -> rules_pb2.GetRuleResponse:
        row = await self._store.get(request.account_id, request.rule_id)
        return rules_pb2.GetRuleResponse(rule=message(row))

    async def ListRules(
        self, request: rules_pb2.ListRulesRequest, context: Any
    ) -> rules_pb2.ListRulesResponse:
        rows = await self._store.all(request.account_id)
        return rules_pb2.ListRulesResponse(rules=[message(r) for r in rows])

    async def UpdateRule(
        self, request: rules_pb2.UpdateRuleRequest, context: Any
    ) -> rules_pb2.UpdateRuleResponse:
        if not request.rule.account_id or not request.rule.rule_id:
            raise InvalidArgument("rule.account_id and rule.rule_id must be set")
        row = await self._store.update(request.rule, request.update_mask, request.expected_revision)
        return rules_pb2.UpdateRuleResponse(rule=message(row))

    async def DeleteRule(
        self, request: rules_pb2.DeleteRuleRequest, context: Any
    ) -> rules_pb2.DeleteRuleResponse:
        await self._store.delete(request.account_id, request.rule_id)
        return rules_pb2.DeleteRuleResponse()

    async def PreviewRule(
        self, request: rules_pb2.PreviewRuleRequest, context: Any
    ) -> rules_pb2.PreviewRuleResponse:
        found = await self._insight.preview(
            request.account_id,
            request.rule_id,
            request.draft if request.HasField("draft") else None,
            request.limit,
        )
        reply = rules_pb2.PreviewRuleResponse(matching_invoices=found.matching)
        for record_no, customer_id, when, minor, currency in found.items:
            item = reply.items.add(
                invoice_record_no=record_no,
                customer_id=customer_id,
                amount=common_pb2.Money(amount_minor=minor, currency=currency),
            )
            item.charge_at.FromDatetime(when)
        return reply

    async def ExplainInvoice(
        self, request: rules_pb2.ExplainInvoiceRequest, context: Any
    ) -> rules_pb2.ExplainInvoiceResponse:
        found = await self._insight.explain(request.account_id, request.invoice_record_no)
        reply = rules_pb2.ExplainInvoiceResponse(
            outcome=found.outcome,  # type: ignore[arg-type]
            summary=found.summary,
            rule_id=found.rule_id,
            blockers=found.blockers,
            verdicts=[
                rules_pb2.RuleVerdict(
                    rule_id=v.rule_id,
                    rule_name=v.rule_name,
                    matched=v.matched,
                    failed_condition=v.failed_condition,
                    detail=v.detail,
                )
                for v in found.verdicts
            ],
        )
        if found.next_charge_at is not None:
            reply.next_charge_at.FromDatetime(found.next_charge_at)
        for row in found.attempts:
            attempt = reply.attempts.add(
                attempt=row["attempt"],
                charge_id=row["charge_id"],
                succeeded=row["outcome"] == "succeeded",
                failure_reason=row["failure_reason"],
            )
            attempt.attempted_at.FromDatetime(row["attempted_at"])
        return reply

    async def SetCustomerAutoPay(
        self, request: rules_pb2.SetCustomerAutoPayRequest, context: Any
    ) -> rules_pb2.SetCustomerAutoPayResponse:
        await self._insight.set_auto_pay(request.account_id, request.customer_id, request.enabled)
        return rules_pb2.SetCustomerAutoPayResponse()

    async def SetInvoiceExcluded(
        self, request: rules_pb2.SetInvoiceExcludedRequest, context: Any
    ) -> rules_pb2.SetInvoiceExcludedResponse:
        await self._insight.set_excluded(
            request.account_id, request.invoice_record_no, request.excluded
        )
        return rules_pb2.SetInvoiceExcludedResponse()

    async def ListScheduledCharges(
        self, request: rules_pb2.ListScheduledChargesRequest, context: Any
    ) -> rules_pb2.ListScheduledChargesResponse:
        size = page_size(request.page)
        rows = await self._insight.scheduled(request.account_id, size, request.page.page_token)
        reply = rules_pb2.ListScheduledChargesResponse()
        for row in rows[:size]:
            charge = reply.charges.add(
                account_id=row["account_id"],
                invoice_record_no=row["invoice_record_no"],
                customer_id=row["customer_id"],
                rule_id=row["rule_id"],
                amount=common_pb2.Money(amount_minor=row["amount_minor"], currency=row["currency"]),
                attempt=row["attempt"],
            )
            charge.charge_at.FromDatetime(row["charge_at"])
        if len(rows) > size:
            last = rows[size - 1]
            reply.page.next_page_token = (
                f"{last['charge_at'].isoformat()}|{last['invoice_record_no']}"
            )
        return reply
