"""How each AR object type of the v1 contract maps to an Intacct object."""

from __future__ import annotations

from dataclasses import dataclass

from arbridge.common.v1 import common_pb2
from arbridge_runtime import custom_objects
from arbridge_runtime.errors import InvalidArgument

_CONTACT = (
    "DISPLAYCONTACT.CONTACTNAME",
    "DISPLAYCONTACT.COMPANYNAME",
    "DISPLAYCONTACT.EMAIL1",
    "DISPLAYCONTACT.PHONE1",
    "DISPLAYCONTACT.MAILADDRESS.ADDRESS1",
    "DISPLAYCONTACT.MAILADDRESS.ADDRESS2",
    "DISPLAYCONTACT.MAILADDRESS.CITY",
    "DISPLAYCONTACT.MAILADDRESS.STATE",
    "DISPLAYCONTACT.MAILADDRESS.ZIP",
    "DISPLAYCONTACT.MAILADDRESS.COUNTRY",
)


@dataclass(frozen=True)
class IntacctObject:
    name: str
    fields: tuple[str, ...]
    key_field: str = "RECORDNO"
    modified_field: str = "WHENMODIFIED"
    id_field: str = ""
    docparid: str = ""
    generic_create: bool = True
    generic_update: bool = True


# Checking and savings accounts are read the same way.
_BANK_ACCOUNT_FIELDS = (
    "RECORDNO",
    "BANKACCOUNTID",
    "BANKNAME",
    "GLACCOUNTNO",
    "CURRENCY",
    "STATUS",
    "MEGAENTITYID",
    "WHENMODIFIED",
)

OBJECTS: dict[int, IntacctObject] = {
    common_pb2.OBJECT_TYPE_CUSTOMER: IntacctObject(
        "CUSTOMER",
        (
            "RECORDNO",
            "CUSTOMERID",
            "NAME",
            "STATUS",
            "CURRENCY",
            "TERMNAME",
            "GROUPID",
            "TOTALDUE",
            *_CONTACT,
            "BILLTO.CONTACTNAME",
            "MEGAENTITYID",
            "WHENCREATED",
            "WHENMODIFIED",
        ),
        id_field="CUSTOMERID",
    ),
    common_pb2.OBJECT_TYPE_AR_INVOICE: IntacctObject(
        "ARINVOICE",
        (
            "RECORDNO",
            "RECORDID",
            "STATE",
            "CUSTOMERID",
            "CUSTOMERNAME",
            "DOCNUMBER",
            "DESCRIPTION",
            "TERMNAME",
            "WHENCREATED",
            "WHENDUE",
            "WHENPAID",
            "CURRENCY",
            "BASECURR",
            "TRX_TOTALENTERED",
            "TRX_TOTALPAID",
            "TRX_TOTALDUE",
            "MODULEKEY",
            "MEGAENTITYID",
            "WHENMODIFIED",
        ),
        generic_create=False,
        generic_update=False,
    ),
    common_pb2.OBJECT_TYPE_SALES_INVOICE: IntacctObject(
        "SODOCUMENT",
        (
            "RECORDNO",
            "DOCID",
            "DOCNO",
            "CUSTVENDID",
            "STATE",
            "WHENCREATED",
            "WHENDUE",
            "CURRENCY",
            "TRX_TOTAL",
            "PONUMBER",
            "PRRECORDKEY",
            "MEGAENTITYID",
            "WHENMODIFIED",
        ),
        docparid="Sales Invoice",
        generic_create=False,
        generic_update=False,
    ),
    common_pb2.OBJECT_TYPE_AR_PAYMENT: IntacctObject(
        "ARPYMT",
        (
            "RECORDNO",
            "CUSTOMERID",
            "FINANCIALENTITY",
            "PAYMENTMETHOD",
            "DOCNUMBER",
            "RECEIPTDATE",
            "STATE",
            "CURRENCY",
            "BASECURR",
            "TRX_TOTALENTERED",
            "TRX_TOTALPAID",
            "MEGAENTITYID",
            "WHENMODIFIED",
        ),
    ),
    common_pb2.OBJECT_TYPE_AR_ACCOUNT_LABEL: IntacctObject(
        "ARACCOUNTLABEL",
        ("RECORDNO", "ACCOUNTLABEL", "DESCRIPTION", "GLACCOUNTNO", "STATUS", "WHENMODIFIED"),
        id_field="ACCOUNTLABEL",
    ),
    common_pb2.OBJECT_TYPE_CHECKING_ACCOUNT: IntacctObject(
        "CHECKINGACCOUNT",
        _BANK_ACCOUNT_FIELDS,
        id_field="BANKACCOUNTID",
        generic_create=False,
        generic_update=False,
    ),
    common_pb2.OBJECT_TYPE_SAVINGS_ACCOUNT: IntacctObject(
        "SAVINGSACCOUNT",
        _BANK_ACCOUNT_FIELDS,
        id_field="BANKACCOUNTID",
        generic_create=False,
        generic_update=False,
    ),
    common_pb2.OBJECT_TYPE_CREDIT_CARD_ACCOUNT: IntacctObject(
        "CREDITCARD",
        ("RECORDNO", "CARDID", "DESCRIPTION", "CARDTYPE", "STATUS", "WHENMODIFIED"),
        id_field="CARDID",
        generic_create=False,
        generic_update=False,
    ),
    common_pb2.OBJECT_TYPE_GL_ACCOUNT: IntacctObject(
        "GLACCOUNT",
        ("RECORDNO", "ACCOUNTNO", "TITLE", "ACCOUNTTYPE", "STATUS", "WHENMODIFIED"),
        id_field="ACCOUNTNO",
    ),
    common_pb2.OBJECT_TYPE_STAT_ACCOUNT: IntacctObject(
        "STATACCOUNT",
        ("RECORDNO", "ACCOUNTNO", "TITLE", "ACCOUNTTYPE", "STATUS", "WHENMODIFIED"),
        id_field="ACCOUNTNO",
    ),
    common_pb2.OBJECT_TYPE_ENTITY: IntacctObject(
        "LOCATIONENTITY",
        ("RECORDNO", "LOCATIONID", "NAME", "CURRENCY", "STATUS", "WHENMODIFIED"),
        id_field="LOCATIONID",
        generic_create=False,
        generic_update=False,
    ),
    common_pb2.OBJECT_TYPE_CHARGE_QUEUE: IntacctObject(
        custom_objects.QUEUE_OBJECT,
        (
            "id",
            *custom_objects.QUEUE_REQUEST_FIELDS,
            *custom_objects.QUEUE_OUTCOME_FIELDS,
            "whenmodified",
        ),
        key_field="id",
        modified_field="whenmodified",
        id_field="name",
    ),
    common_pb2.OBJECT_TYPE_INTACCT_RULE: IntacctObject(
        custom_objects.RULE_OBJECT,
        (
            "id",
            *custom_objects.RULE_FIELDS,
            *custom_objects.RULE_STATUS_FIELDS,
            "whenmodified",
        ),
        key_field="id",
        modified_field="whenmodified",
        id_field="name",
    ),
}


_NAMES: dict[int, str] = {int(number): name for name, number in common_pb2.ObjectType.items()}


def object_for(object_type: int) -> IntacctObject:
    found = OBJECTS.get(object_type)
    if found is None:
        raise InvalidArgument(
            f"object_type {_NAMES.get(object_type, str(object_type))} is not readable through "
            "the connector; use one of " + ", ".join(_NAMES[k] for k in OBJECTS)
        )
    return found
