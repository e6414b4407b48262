"""The card gateway's state and rules: shoppers, hosted-field tokens, transactions, refunds.

Card numbers exist only here, inside the sandbox, as a real gateway would
hold them: merchants (arbridge) see tokens, vaulted shopper ids, brands and
last four digits. Test card numbers decide outcomes (see ``TEST_CARDS``).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from arbridge_runtime.redaction import luhn_valid

# Card number -> (brand, outcome). Outcome "approve" or a decline error name.
TEST_CARDS: dict[str, tuple[str, str]] = {
    "4111111111111111": ("VISA", "approve"),
    "4242424242424242": ("VISA", "approve"),
    "5555555555554444": ("MASTERCARD", "approve"),
    "378282246310005": ("AMEX", "approve"),
    "6011111111111117": ("DISCOVER", "approve"),
    "4000000000000002": ("VISA", "DO_NOT_HONOR"),
    "4000000000009995": ("VISA", "INSUFFICIENT_FUNDS"),
    "4000000000000069": ("VISA", "EXPIRED_CARD"),
    "4000000000000119": ("VISA", "CALL_ISSUER"),
}
DECLINES = {
    "DO_NOT_HONOR": ("14002", "The card was declined by the issuer (do not honor)."),
    "INSUFFICIENT_FUNDS": ("14016", "The card has insufficient funds."),
    "EXPIRED_CARD": ("14003", "The card has expired."),
    "CALL_ISSUER": ("14004", "The issuer asks the cardholder to call it."),
}
# An ACH debit from an account ending 0000 is returned later (R01, insufficient funds).
ACH_FAILING_ACCOUNT_SUFFIX = "0000"
ACCOUNT_TYPES = (
    "CONSUMER_CHECKING",
    "CONSUMER_SAVINGS",
    "CORPORATE_CHECKING",
    "CORPORATE_SAVINGS",
)


class GatewayError(Exception):
    """An error answer: HTTP status and BlueSnap-style messages."""

    def __init__(self, status: int, name: str, code: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.body = {"message": [{"errorName": name, "code": code, "description": description}]}


@dataclass
class Card:
    number: str
    brand: str
    exp_month: int
    exp_year: int
    cvv_ok: bool = True

    @property
    def last4(self) -> str:
        return self.number[-4:]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(
            f"card|{self.number}|{self.exp_month}|{self.exp_year}".encode()
        ).hexdigest()[:24]

    def public(self) -> dict[str, Any]:
        return {
            "cardLastFourDigits": self.last4,
            "cardType": self.brand,
            "expirationMonth": f"{self.exp_month:02d}",
            "expirationYear": str(self.exp_year),
            "cardFingerprint": self.fingerprint,
        }


@dataclass
class Bank:
    account_number: str
    routing_number: str
    account_type: str

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(
            f"ach|{self.routing_number}|{self.account_number}".encode()
        ).hexdigest()[:24]

    def public(self) -> dict[str, Any]:
        return {
            "publicAccountNumber": "*****" + self.account_number[-4:],
            "publicRoutingNumber": "*****" + self.routing_number[-4:],
            "accountType": self.account_type,
            "accountFingerprint": self.fingerprint,
        }


@dataclass
class Shopper:
    shopper_id: int
    first_name: str
    last_name: str
    merchant_shopper_id: str
    cards: list[Card] = field(default_factory=list)
    banks: list[Bank] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "vaultedShopperId": self.shopper_id,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "merchantShopperId": self.merchant_shopper_id,
            "paymentSources": {
                "creditCardInfo": [{"creditCard": c.public()} for c in self.cards],
                "ecpDetails": [{"ecp": b.public()} for b in self.banks],
            },
        }


@dataclass
class Transaction:
    transaction_id: str
    merchant_transaction_id: str
    kind: str  # card | ach
    amount: Decimal
    currency: str
    shopper_id: int
    status: str  # success | PENDING | declined | returned
    created: float
    card: Card | None = None
    bank: Bank | None = None
    refunded: Decimal = Decimal(0)
    level2: dict[str, Any] = field(default_factory=dict)
    decline: str = ""
    # Each refund's amount and reason, as the merchant's console lists them.
    refunds: list[tuple[Decimal, str]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "transactionId": self.transaction_id,
            "merchantTransactionId": self.merchant_transaction_id,
            "amount": float(self.amount),
            "currency": self.currency,
            "vaultedShopperId": self.shopper_id,
            "processingInfo": {"processingStatus": self.status},
            "refundedAmount": float(self.refunded),
        }
        if self.card:
            body["cardTransactionType"] = "AUTH_CAPTURE"
            body["creditCard"] = {
                "cardLastFourDigits": self.card.last4,
                "cardType": self.card.brand,
            }
        if self.bank:
            body["ecpTransaction"] = self.bank.public()
        if self.level2:
            body["level3Data"] = self.level2
        return body


@dataclass
class Faults:
    latency_ms: int = 0
    error_5xx_rate: float = 0.0
    # The charge is made, then the answer is lost (the caller times out).
    timeout_after_charge_rate: float = 0.0
    timeout_after_charge_next: int = 0


class Gateway:
    """All merchants' data of one sandbox (one merchant account, like a BlueSnap sandbox)."""

    def __init__(self, merchant_id: str, username: str, password: str) -> None:
        self.merchant_id = merchant_id
        self.username = username
        self.password = password
        self.shoppers: dict[int, Shopper] = {}
        self.tokens: dict[str, Card | Bank | None] = {}
        self.transactions: dict[str, Transaction] = {}
        self.by_merchant_id: dict[str, str] = {}
        self.idempotency: dict[str, tuple[str, int, dict[str, Any]]] = {}
        self.faults = Faults()
        self.notification_url = ""
        self.ach_settle_seconds = 2.0
        self._next_shopper = 10_000_000
        self._lock = threading.Lock()

    # Hosted fields: the card number goes from the payer's browser to here, never to arbridge.

    def new_token(self) -> str:
        token = secrets.token_urlsafe(18)
        self.tokens[token] = None
        return token

    def fill_token(self, token: str, number: str, exp: str, cvv: str) -> Card:
        if token not in self.tokens:
            raise GatewayError(
                400, "EXPIRED_TOKEN", "14040", "The hosted-fields token is unknown or expired."
            )
        digits = "".join(ch for ch in number if ch.isdigit())
        if not 13 <= len(digits) <= 19 or not luhn_valid(digits):
            raise GatewayError(400, "INVALID_CARD_NUMBER", "10001", "The card number is not valid.")
        try:
            month_text, year_text = exp.split("/")
            month, year = int(month_text), int(year_text)
            year = year + 2000 if year < 100 else year
        except ValueError:
            raise GatewayError(
                400, "INVALID_EXP_DATE", "10002", "The expiry date must be MM/YY."
            ) from None
        if not 1 <= month <= 12:
            raise GatewayError(400, "INVALID_EXP_DATE", "10002", "The expiry month is not valid.")
        if not cvv.isdigit() or len(cvv) not in (3, 4):
            raise GatewayError(400, "INVALID_CVV", "10003", "The security code is not valid.")
        brand = TEST_CARDS.get(digits, (_brand(digits), "approve"))[0]
        card = Card(digits, brand, month, year)
        self.tokens[token] = card
        return card

    def fill_bank_token(
        self, token: str, routing_number: str, account_number: str, account_type: str
    ) -> Bank:
        """A bank account (ACH) entered into the hosted fields."""
        if token not in self.tokens:
            raise GatewayError(
                400, "EXPIRED_TOKEN", "14040", "The hosted-fields token is unknown or expired."
            )
        routing = routing_number.strip()
        account = account_number.strip()
        if len(routing) != 9 or not routing.isdigit() or not _aba_valid(routing):
            raise GatewayError(
                400, "INVALID_ECP", "10010", "The routing number is not a valid ABA number."
            )
        if not account.isdigit() or not 4 <= len(account) <= 17:
            raise GatewayError(
                400, "INVALID_ECP", "10010", "The account number must be 4 to 17 digits."
            )
        kind = account_type.upper()
        if kind not in ACCOUNT_TYPES:
            raise GatewayError(
                400,
                "INVALID_ECP",
                "10010",
                f"accountType must be one of {', '.join(ACCOUNT_TYPES)}.",
            )
        bank = Bank(account, routing, kind)
        self.tokens[token] = bank
        return bank

    def token_source(self, token: str) -> Card | Bank:
        source = self.tokens.get(token)
        if source is None:
            raise GatewayError(
                404,
                "EXPIRED_TOKEN",
                "14040",
                "The hosted-fields token is unknown, expired, used or has nothing entered yet.",
            )
        return source

    def create_shopper(self, body: dict[str, Any]) -> Shopper:
        with self._lock:
            self._next_shopper += 1
            shopper = Shopper(
                self._next_shopper,
                str(body.get("firstName", "")),
                str(body.get("lastName", "")),
                str(body.get("merchantShopperId", "")),
            )
            self.shoppers[shopper.shopper_id] = shopper
        self._add_sources(shopper, body.get("paymentSources") or {})
        return shopper

    def update_shopper(self, shopper_id: int, body: dict[str, Any]) -> Shopper:
        shopper = self.shopper(shopper_id)
        self._add_sources(shopper, body.get("paymentSources") or {})
        return shopper

    def shopper(self, shopper_id: int) -> Shopper:
        shopper = self.shoppers.get(shopper_id)
        if shopper is None:
            raise GatewayError(
                404, "SHOPPER_NOT_FOUND", "10000", f"Vaulted shopper {shopper_id} not found."
            )
        return shopper

    def _take_token(self, token: str, kind: type[Card] | type[Bank]) -> Card | Bank:
        source = self.tokens.get(token)
        if not isinstance(source, kind):
            what = "card" if kind is Card else "bank account"
            raise GatewayError(
                400,
                "EXPIRED_TOKEN",
                "14040",
                f"The hosted-fields token is unknown, expired or holds no {what}.",
            )
        del self.tokens[token]
        return source

    def _add_sources(self, shopper: Shopper, sources: dict[str, Any]) -> None:
        """Vaults each source of a create or update (from a token, or an ECP account in
        full); an entry with ``status`` ``D`` deletes the shopper's source it names
        instead (a card by last four digits and type, an account by its public numbers)."""
        for info in sources.get("creditCardInfo") or []:
            if str(info.get("status", "")).upper() == "D":
                named = info.get("creditCard") or {}
                shopper.cards.remove(
                    _one_card(
                        shopper,
                        str(named.get("cardLastFourDigits", "")),
                        str(named.get("cardType", "")),
                    )
                )
                continue
            card = self._take_token(str(info.get("pfToken", "")), Card)
            assert isinstance(card, Card)
            if all(c.fingerprint != card.fingerprint for c in shopper.cards):
                shopper.cards.append(card)
        for info in sources.get("ecpDetails") or []:
            if str(info.get("status", "")).upper() == "D":
                named = info.get("ecp") or {}
                shopper.banks.remove(
                    _one_bank(
                        shopper,
                        str(named.get("publicAccountNumber", "")),
                        str(named.get("publicRoutingNumber", "")),
                    )
                )
                continue
            if info.get("pfToken"):
                bank = self._take_token(str(info["pfToken"]), Bank)
                assert isinstance(bank, Bank)
            else:
                ecp = info.get("ecp") or {}
                account = str(ecp.get("accountNumber", ""))
                routing = str(ecp.get("routingNumber", ""))
                if not account.isdigit() or not routing.isdigit() or len(routing) != 9:
                    raise GatewayError(
                        400, "INVALID_ECP", "10010", "The bank account details are not valid."
                    )
                bank = Bank(account, routing, str(ecp.get("accountType", "CONSUMER_CHECKING")))
            if all(b.fingerprint != bank.fingerprint for b in shopper.banks):
                shopper.banks.append(bank)

    # Transactions ---------------------------------------------------------------------

    def charge(self, body: dict[str, Any], kind: str) -> Transaction:
        merchant_tx = str(body.get("merchantTransactionId", ""))
        if merchant_tx and merchant_tx in self.by_merchant_id:
            # A second charge under the same merchant transaction id is refused, so a
            # caller can never charge twice by repeating itself.
            raise GatewayError(
                400,
                "PROCESSING_DUPLICATE",
                "14019",
                f"A transaction with merchantTransactionId {merchant_tx} exists.",
            )
        try:
            amount = Decimal(str(body.get("amount")))
        except ArithmeticError:
            raise GatewayError(400, "INVALID_AMOUNT", "10020", "amount must be a number.") from None
        if amount <= 0:
            raise GatewayError(400, "INVALID_AMOUNT", "10020", "amount must be positive.")
        currency = str(body.get("currency", ""))
        if len(currency) != 3:
            raise GatewayError(400, "INVALID_CURRENCY", "10021", "currency must be an ISO code.")
        shopper = self.shopper(int(body.get("vaultedShopperId", 0)))
        transaction = Transaction(
            transaction_id=str(secrets.randbelow(9 * 10**9) + 10**9),
            merchant_transaction_id=merchant_tx,
            kind=kind,
            amount=amount,
            currency=currency.upper(),
            shopper_id=shopper.shopper_id,
            status="success",
            created=time.time(),
            level2={
                k: v
                for k, v in (body.get("level3Data") or {}).items()
                if k in ("taxAmount", "customerReferenceNumber")
            },
        )
        if kind == "card":
            named = body.get("creditCard") or {}
            card = _one_card(
                shopper, str(named.get("cardLastFourDigits", "")), str(named.get("cardType", ""))
            )
            transaction.card = card
            outcome = TEST_CARDS.get(card.number, (card.brand, "approve"))[1]
            if outcome != "approve":
                transaction.status = "declined"
                transaction.decline = outcome
        else:
            named = body.get("ecpTransaction") or {}
            transaction.bank = _one_bank(
                shopper,
                str(named.get("publicAccountNumber", "")),
                str(named.get("publicRoutingNumber", "")),
            )
            transaction.status = "PENDING"
        with self._lock:
            self.transactions[transaction.transaction_id] = transaction
            if merchant_tx:
                self.by_merchant_id[merchant_tx] = transaction.transaction_id
        if transaction.status == "declined":
            name = transaction.decline
            code, description = DECLINES[name]
            raise GatewayError(400, name, code, description)
        return transaction

    def lookup(self, key: str) -> Transaction:
        transaction = self.transactions.get(key)
        if transaction is None and key in self.by_merchant_id:
            transaction = self.transactions[self.by_merchant_id[key]]
        if transaction is None:
            raise GatewayError(
                404, "TRANSACTION_NOT_FOUND", "14008", f"Transaction {key} not found."
            )
        return transaction

    def refund(self, transaction_id: str, amount: Decimal | None, reason: str = "") -> Transaction:
        transaction = self.lookup(transaction_id)
        if transaction.status != "success":
            raise GatewayError(
                400,
                "PAYMENT_METHOD_NOT_REFUNDABLE",
                "14011",
                "Only succeeded transactions can be refunded.",
            )
        refundable = transaction.amount - transaction.refunded
        amount = refundable if amount is None else amount
        if amount <= 0 or amount > refundable:
            raise GatewayError(
                400, "REFUND_MAX_AMOUNT_FAILURE", "14012", f"At most {refundable} can be refunded."
            )
        transaction.refunded += amount
        transaction.refunds.append((amount, reason))
        return transaction


def _one_card(shopper: Shopper, last4: str, brand: str) -> Card:
    """The vaulted card a request names by last four digits and type (either may be
    left out while it still names one card); a request that names none, or several,
    is refused: the gateway never guesses which card to charge or delete."""
    found = [
        c
        for c in shopper.cards
        if (not last4 or c.last4 == last4) and (not brand or c.brand == brand.upper())
    ]
    if not found:
        raise GatewayError(400, "CARD_NOT_FOUND", "10030", "The shopper has no such card.")
    if len(found) > 1:
        raise GatewayError(
            400,
            "CARD_NOT_IDENTIFIED",
            "10032",
            "The shopper has several cards that match; name the card by cardLastFourDigits"
            " and cardType.",
        )
    return found[0]


def _one_bank(shopper: Shopper, account: str, routing: str) -> Bank:
    """The vaulted bank account a request names by its public (masked) account number,
    and routing number when given; none or several are refused, as for cards."""
    found = [
        b
        for b in shopper.banks
        if (not account or b.account_number.endswith(account[-4:]))
        and (not routing or b.routing_number.endswith(routing[-4:]))
    ]
    if not found:
        raise GatewayError(400, "ECP_NOT_FOUND", "10031", "The shopper has no such bank account.")
    if len(found) > 1:
        raise GatewayError(
            400,
            "ECP_NOT_IDENTIFIED",
            "10033",
            "The shopper has several bank accounts that match; name the account by"
            " publicAccountNumber and publicRoutingNumber.",
        )
    return found[0]


def _aba_valid(routing: str) -> bool:
    """The ABA routing number checksum (weights 3, 7, 1)."""
    weights = (3, 7, 1) * 3
    return sum(int(d) * w for d, w in zip(routing, weights, strict=True)) % 10 == 0


def _brand(digits: str) -> str:
    if digits.startswith("4"):
        return "VISA"
    if digits[:2] in ("51", "52", "53", "54", "55") or digits[:2] == "22":
        return "MASTERCARD"
    if digits[:2] in ("34", "37"):
        return "AMEX"
    return "DISCOVER" if digits.startswith("6") else "UNKNOWN"
