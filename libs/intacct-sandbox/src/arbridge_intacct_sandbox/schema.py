"""The Intacct objects the sandbox serves, their fields and the permissions that guard them.

Field names, types and the codes ``readByQuery`` compares against follow
Intacct's published object references (see ``shared/intacct-corpus/API-NOTES.md``).
Values are stored as Intacct returns them: text, with nested fields kept
under dotted names (``DISPLAYCONTACT.EMAIL1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TEXT, INT, DECIMAL, DATE, DATETIME, BOOL = (
    "text",
    "integer",
    "decimal",
    "date",
    "datetime",
    "boolean",
)

_TYPES = {
    TEXT: ("Pt_FieldString", "string"),
    INT: ("Pt_FieldInt", "integer"),
    DECIMAL: ("Pt_FieldDouble", "decimal"),
    DATE: ("Pt_FieldDate", "date"),
    DATETIME: ("Pt_FieldDateTime", "timestamp"),
    BOOL: ("Pt_FieldBoolean", "boolean"),
}


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str = TEXT
    label: str = ""
    required: bool = False
    read_only: bool = False
    max_length: int = 80
    # readByQuery compares stored codes, not display values (STATUS = 'T').
    codes: tuple[tuple[str, str], ...] = ()
    custom: bool = False

    @property
    def data_names(self) -> tuple[str, str]:
        return _TYPES[self.type]

    def code_of(self, display: str) -> str:
        for shown, code in self.codes:
            if shown == display:
                return code
        return display


@dataclass(frozen=True)
class Permission:
    """One line of the integration guide's permission list."""

    key: str
    module: str
    obj: str
    rights: tuple[str, ...]
    fix: str
    platform: bool = False  # needs Platform Services (the charge queue)


PERMISSIONS: dict[str, Permission] = {
    p.key: p
    for p in (
        Permission(
            "company.attachments",
            "Company",
            "Attachments",
            ("Edit",),
            "Company > Admin > Web Services Users (or Roles) > Company: Attachments = Edit",
        ),
        Permission(
            "cm.creditcard",
            "Cash Management",
            "Credit Card Accounts",
            ("List", "View"),
            "Cash Management: Credit Card Accounts = List, View",
        ),
        Permission(
            "cm.checking",
            "Cash Management",
            "Checking Accounts",
            ("List", "View"),
            "Cash Management: Checking Accounts = List, View",
        ),
        Permission(
            "cm.savings",
            "Cash Management",
            "Savings Accounts",
            ("List", "View"),
            "Cash Management: Savings Accounts = List, View",
        ),
        Permission(
            "gl.accounts",
            "General Ledger",
            "Accounts",
            ("List", "View"),
            "General Ledger: Accounts = List, View",
        ),
        Permission(
            "gl.stataccounts",
            "General Ledger",
            "Statistical Accounts",
            ("List", "View"),
            "General Ledger: Statistical Accounts = List, View",
        ),
        Permission(
            "ar.payments",
            "Accounts Receivable",
            "Manage Payments",
            ("List", "View", "Add", "Edit"),
            "Accounts Receivable: Manage Payments = List, View, Add, Edit",
        ),
        Permission(
            "ar.customers",
            "Accounts Receivable",
            "Customers",
            ("List", "View", "Add", "Edit"),
            "Accounts Receivable: Customers = List, View, Add, Edit",
        ),
        Permission(
            "ar.invoices",
            "Accounts Receivable",
            "Invoices",
            ("List", "View", "Add", "Edit", "Post"),
            "Accounts Receivable: Invoices = List, View, Add, Edit, Post",
        ),
        Permission(
            "ar.accountlabels",
            "Accounts Receivable",
            "AR Account Labels",
            ("List", "View", "Add"),
            "Accounts Receivable: AR Account Labels = List, View, Add",
        ),
        Permission(
            "oe.transactions",
            "Order Entry",
            "Order Entry Transactions",
            ("List", "View", "Add", "Edit"),
            "Order Entry: Order Entry Transactions = List, View, Add, Edit",
        ),
        Permission(
            "oe.definitions",
            "Order Entry",
            "Order Entry Transaction Definitions",
            ("List", "View", "Add", "Edit"),
            "Order Entry: Order Entry Transaction Definitions = List, View, Add, Edit",
        ),
        Permission(
            "bluesnap.queue",
            "BlueSnap",
            "BlueSnapARQueue",
            ("List", "View", "Add", "Edit", "Delete", "Import", "Templates"),
            "BlueSnap: BlueSnapARQueue = List, View, Add, Edit, Delete, Import, Templates "
            "(needs Platform Services and the BlueSnap application)",
            platform=True,
        ),
    )
}

ALL_GRANTS: dict[str, frozenset[str]] = {k: frozenset(p.rights) for k, p in PERMISSIONS.items()}


@dataclass(frozen=True)
class ObjectDef:
    name: str
    id_field: str | None
    permission: str | None
    fields: tuple[FieldDef, ...]
    singular: str
    plural: str
    generic_create: bool = False
    generic_update: bool = False
    generic_delete: bool = True
    # Platform Services custom object: lower-case integration name and fields.
    custom_object: bool = False
    field_map: dict[str, FieldDef] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "field_map", {f.name: f for f in self.fields})

    @property
    def list_name(self) -> str:
        """readByQuery's lower-case list type and element name."""
        return self.name.lower()


_STATUS = FieldDef("STATUS", TEXT, "Status", codes=(("active", "T"), ("inactive", "F")))


def _f(name: str, type_: str = TEXT, label: str = "", **kw: object) -> FieldDef:
    return FieldDef(name, type_, label or name.replace("_", " ").title(), **kw)  # type: ignore[arg-type]


_AUDIT = (
    _f("WHENCREATED", DATETIME, "When created", read_only=True),
    _f("WHENMODIFIED", DATETIME, "When modified", read_only=True),
    _f("CREATEDBY", INT, "Created by", read_only=True),
    _f("MODIFIEDBY", INT, "Modified by", read_only=True),
    _f("MEGAENTITYKEY", INT, "Created at - Entity key", read_only=True),
    _f("MEGAENTITYID", TEXT, "Created at - Entity ID", read_only=True),
    _f("MEGAENTITYNAME", TEXT, "Created at - Entity name", read_only=True),
)


def _more(names: str) -> tuple[FieldDef, ...]:
    """Further fields of Intacct's object definition that the sandbox keeps empty unless set."""
    return tuple(
        _f(n, DECIMAL if n.startswith(("TOTAL", "TRX_TOTAL")) else TEXT) for n in names.split()
    )


_CONTACT = tuple(
    _f(f"DISPLAYCONTACT.{n}")
    for n in (
        "CONTACTNAME",
        "COMPANYNAME",
        "PRINTAS",
        "FIRSTNAME",
        "LASTNAME",
        "PHONE1",
        "EMAIL1",
        "EMAIL2",
        "MAILADDRESS.ADDRESS1",
        "MAILADDRESS.ADDRESS2",
        "MAILADDRESS.CITY",
        "MAILADDRESS.STATE",
        "MAILADDRESS.ZIP",
        "MAILADDRESS.COUNTRY",
        "MAILADDRESS.COUNTRYCODE",
    )
)

CUSTOMER = ObjectDef(
    "CUSTOMER",
    "CUSTOMERID",
    "ar.customers",
    (
        _f("RECORDNO", INT, "Record number", read_only=True, max_length=8),
        _f("CUSTOMERID", TEXT, "Customer ID", required=True, max_length=20),
        _f("NAME", TEXT, "Name", required=True, max_length=100),
        _STATUS,
        _f("ONETIME", BOOL, codes=(("true", "T"), ("false", "F"))),
        _f("ONHOLD", BOOL, codes=(("true", "T"), ("false", "F"))),
        _f("CUSTTYPE"),
        _f("PARENTID"),
        _f("TERMNAME", TEXT, "Term"),
        _f("CREDITLIMIT", DECIMAL),
        _f("TOTALDUE", DECIMAL, read_only=True),
        _f("CURRENCY"),
        _f("GROUPID", TEXT, "Customer group"),
        *_CONTACT,
        _f("BILLTO.CONTACTNAME"),
        _f("SHIPTO.CONTACTNAME"),
        *_more(
            "ENTITY PARENTKEY PARENTNAME CUSTREPNAME GLGRPKEY GLGROUP OBJECTRESTRICTION "
            "CUSTREPID TERMVALUE DISPLAYCONTACT.INITIAL DISPLAYCONTACT.PHONE2 "
            "DISPLAYCONTACT.CELLPHONE DISPLAYCONTACT.FAX DISPLAYCONTACT.URL1 RESALENO TAXID "
            "ARACCOUNT DELIVERY_OPTIONS COMMENTS RECORD_URL "
        ),
        *_AUDIT,
    ),
    "Customer",
    "Customers",
    generic_create=True,
    generic_update=True,
)

ARINVOICE = ObjectDef(
    "ARINVOICE",
    None,
    "ar.invoices",
    (
        _f("RECORDNO", INT, "Record number", read_only=True, max_length=8),
        _f("RECORDTYPE", TEXT, read_only=True),
        _f("RECORDID", TEXT, "Invoice number"),
        _f("DOCNUMBER", TEXT, "Reference number"),
        _f(
            "STATE",
            TEXT,
            "State",
            codes=(
                ("Draft", "I"),
                ("Posted", "A"),
                ("Partially Paid", "A"),
                ("Paid", "A"),
                ("Reversed", "V"),
            ),
        ),
        _f("RAWSTATE", TEXT, read_only=True),
        _f("CUSTOMERID", TEXT, "Customer ID", required=True),
        _f("CUSTOMERNAME", TEXT, read_only=True),
        _f("TERMNAME", TEXT, "Term"),
        _f("DESCRIPTION"),
        _f("WHENPOSTED", DATE, "GL posting date"),
        _f("WHENDUE", DATE, "Due date"),
        _f("WHENPAID", DATE, "Date fully paid", read_only=True),
        _f("BASECURR"),
        _f("CURRENCY"),
        _f("TOTALENTERED", DECIMAL),
        _f("TOTALPAID", DECIMAL),
        _f("TOTALDUE", DECIMAL),
        _f("TRX_TOTALENTERED", DECIMAL),
        _f("TRX_TOTALPAID", DECIMAL),
        _f("TRX_TOTALDUE", DECIMAL),
        _f("MODULEKEY", TEXT, read_only=True),
        _f("SUPDOCID"),
        *_more(
            "CUSTMESSAGEID CUSTMESSAGE.MESSAGE DESCRIPTION2 WHENDISCOUNT EXCH_RATE_DATE "
            "EXCH_RATE_TYPE_ID EXCHANGE_RATE TOTALSELECTED BILLTOPAYTOCONTACTNAME "
            "SHIPTORETURNTOCONTACTNAME CONTACT.CONTACTNAME CONTACT.PREFIX CONTACT.FIRSTNAME "
            "CONTACT.INITIAL CONTACT.LASTNAME CONTACT.COMPANYNAME CONTACT.PRINTAS "
            "CONTACT.PHONE1 CONTACT.PHONE2 CONTACT.CELLPHONE CONTACT.PAGER CONTACT.FAX "
            "CONTACT.EMAIL1 CONTACT.EMAIL2 CONTACT.URL1 CONTACT.URL2 SHIPTO.CONTACTNAME "
            "SHIPTO.PREFIX SHIPTO.FIRSTNAME SHIPTO.INITIAL SHIPTO.LASTNAME SHIPTO.COMPANYNAME "
            "SHIPTO.PRINTAS SHIPTO.PHONE1 SHIPTO.PHONE2 SHIPTO.CELLPHONE SHIPTO.PAGER "
            "SHIPTO.FAX SHIPTO.EMAIL1 SHIPTO.EMAIL2 SHIPTO.URL1 SHIPTO.URL2 "
            "BILLTO.CONTACTNAME BILLTO.PREFIX BILLTO.FIRSTNAME BILLTO.INITIAL BILLTO.LASTNAME "
            "BILLTO.COMPANYNAME BILLTO.PRINTAS BILLTO.PHONE1 BILLTO.PHONE2 BILLTO.CELLPHONE "
            "BILLTO.PAGER BILLTO.FAX BILLTO.EMAIL1 BILLTO.EMAIL2 BILLTO.URL1 BILLTO.URL2 "
            "SHIPTO.VISIBLE BILLTO.VISIBLE CONTACT.MAILADDRESS.ADDRESS1 "
            "CONTACT.MAILADDRESS.ADDRESS2 CONTACT.MAILADDRESS.CITY CONTACT.MAILADDRESS.STATE "
            "CONTACT.MAILADDRESS.ZIP CONTACT.MAILADDRESS.COUNTRY "
            "CONTACT.MAILADDRESS.COUNTRYCODE SHIPTO.MAILADDRESS.ADDRESS1 "
            "SHIPTO.MAILADDRESS.ADDRESS2 SHIPTO.MAILADDRESS.CITY SHIPTO.MAILADDRESS.STATE "
            "SHIPTO.MAILADDRESS.ZIP SHIPTO.MAILADDRESS.COUNTRY SHIPTO.MAILADDRESS.COUNTRYCODE "
            "BILLTO.MAILADDRESS.ADDRESS1 BILLTO.MAILADDRESS.ADDRESS2 BILLTO.MAILADDRESS.CITY "
            "BILLTO.MAILADDRESS.STATE BILLTO.MAILADDRESS.ZIP BILLTO.MAILADDRESS.COUNTRY "
            "BILLTO.MAILADDRESS.COUNTRYCODE PRBATCH PRBATCHKEY SYSTEMGENERATED DUE_IN_DAYS "
            "SHIPTO.TAXGROUP.NAME SHIPTO.TAXID SHIPTO.TAXGROUP.RECORDNO TAXSOLUTIONID "
            "TAXMETHOD RETAINAGEPERCENTAGE TRX_TOTALRETAINED TRX_TOTALRELEASED TOTALRETAINED "
            "RECORD_URL "
        ),
        _f("AUWHENCREATED", DATETIME, "Audit when created", read_only=True),
        # ARINVOICE's WHENCREATED is the invoice date (a date), unlike other objects.
        _f("WHENCREATED", DATE, "Date", read_only=True),
        *[f for f in _AUDIT if f.name != "WHENCREATED"],
    ),
    "AR Invoice",
    "AR Invoices",
)

ARINVOICEITEM = ObjectDef(
    "ARINVOICEITEM",
    None,
    "ar.invoices",
    (
        _f("RECORDNO", INT, read_only=True),
        _f("RECORDKEY", INT, "Invoice record number"),
        _f("LINE_NO", INT),
        _f("ACCOUNTNO", TEXT, "GL account"),
        _f("AMOUNT", DECIMAL),
        _f("TRX_AMOUNT", DECIMAL),
        _f("ENTRYDESCRIPTION", TEXT, "Memo"),
        _f("LOCATIONID"),
        _f("CURRENCY"),
        *_AUDIT,
    ),
    "AR Invoice Detail",
    "AR Invoice Details",
    generic_delete=False,
)

ARPYMT = ObjectDef(
    "ARPYMT",
    None,
    "ar.payments",
    (
        _f("RECORDNO", INT, read_only=True),
        _f("RECORDTYPE", TEXT, read_only=True),
        _f("CUSTOMERID", TEXT, required=True),
        _f("CUSTOMERNAME", TEXT, read_only=True),
        _f("FINANCIALENTITY", TEXT, "Bank account"),
        _f("UNDEPOSITEDACCOUNTNO"),
        _f("PAYMENTMETHOD", TEXT, "Payment method"),
        _f("DOCNUMBER", TEXT, "Reference"),
        _f("RECEIPTDATE", DATE),
        _f("PAYMENTDATE", DATE),
        _f("WHENPAID", DATE),
        _f("STATE", TEXT, codes=(("Draft", "I"), ("Posted", "A"), ("Reversed", "V"))),
        _f("CURRENCY"),
        _f("BASECURR"),
        _f("TOTALENTERED", DECIMAL),
        _f("TOTALPAID", DECIMAL),
        _f("TRX_TOTALENTERED", DECIMAL),
        _f("TRX_TOTALPAID", DECIMAL),
        _f("DESCRIPTION"),
        *_AUDIT,
    ),
    "AR Payment",
    "AR Payments",
    generic_create=True,
    generic_update=True,
)

ARPYMTDETAIL = ObjectDef(
    "ARPYMTDETAIL",
    None,
    "ar.payments",
    (
        _f("RECORDNO", INT, read_only=True),
        _f("PAYMENTKEY", INT),
        _f("RECORDKEY", INT),
        _f("TRX_PAYMENTAMOUNT", DECIMAL),
        _f("PAYMENTAMOUNT", DECIMAL),
        _f("CURRENCY"),
        *_AUDIT,
    ),
    "AR Payment Detail",
    "AR Payment Details",
    generic_delete=False,
)

SODOCUMENT = ObjectDef(
    "SODOCUMENT",
    "DOCID",
    "oe.transactions",
    (
        _f("RECORDNO", INT, read_only=True),
        _f("DOCID", TEXT, "Document ID", read_only=True),
        _f("DOCNO", TEXT, "Document number"),
        _f("DOCPARID", TEXT, "Transaction definition"),
        _f("CUSTVENDID", TEXT, "Customer ID"),
        _f("CUSTVENDNAME", TEXT, read_only=True),
        _f(
            "STATE",
            TEXT,
            codes=(("Draft", "I"), ("Pending", "P"), ("Closed", "C"), ("Converted", "O")),
        ),
        _f("WHENDUE", DATE),
        _f("PONUMBER"),
        _f("TERM.NAME", TEXT, "Payment term"),
        _f("CURRENCY"),
        _f("BASECURR"),
        _f("TOTAL", DECIMAL),
        _f("TRX_TOTAL", DECIMAL),
        _f("PRRECORDKEY", INT, "AR invoice record number", read_only=True),
        _f("MESSAGE"),
        _f("WHENCREATED", DATE, "Date"),
        *[f for f in _AUDIT if f.name != "WHENCREATED"],
        _f("AUWHENCREATED", DATETIME, read_only=True),
    ),
    "Sales Transaction",
    "Sales Transactions",
)

_ACCOUNT_COMMON = (_STATUS, _f("CURRENCY"), _f("LOCATIONID"), *_AUDIT)

CHECKINGACCOUNT = ObjectDef(
    "CHECKINGACCOUNT",
    "BANKACCOUNTID",
    "cm.checking",
    (
        _f("RECORDNO", INT, read_only=True),
        _f("BANKACCOUNTID", TEXT, "Account ID"),
        _f("BANKACCOUNTNO"),
        _f("GLACCOUNTNO"),
        _f("BANKNAME"),
        _f("ROUTINGNO"),
        *_ACCOUNT_COMMON,
    ),
    "Checking Account",
    "Checking Accounts",
    generic_delete=False,
)
SAVINGSACCOUNT = ObjectDef(
    "SAVINGSACCOUNT",
    "BANKACCOUNTID",
    "cm.savings",
    (
        _f("RECORDNO", INT, read_only=True),
        _f("BANKACCOUNTID", TEXT, "Account ID"),
        _f("BANKACCOUNTNO"),
        _f("GLACCOUNTNO"),
        _f("BANKNAME"),
        *_ACCOUNT_COMMON,
    ),
    "Savings Account",
    "Savings Accounts",
    generic_delete=False,
)
CREDITCARD = ObjectDef(
    "CREDITCARD",
    "CARDID",
    "cm.creditcard",
    (
        _f("RECORDNO", INT, read_only=True),
        _f("CARDID", TEXT, "Card ID"),
        _f("DESCRIPTION"),
        _f("CARDTYPE"),
        _f("EXP_MONTH"),
        _f("EXP_YEAR"),
        _f("VENDORID"),
        *_ACCOUNT_COMMON,
    ),
    "Credit Card",
    "Credit Cards",
    generic_delete=False,
)
GLACCOUNT = ObjectDef(
    "GLACCOUNT",
    "ACCOUNTNO",
    "gl.accounts",
    (
        _f("RECORDNO", INT, read_only=True),
        _f("ACCOUNTNO", TEXT, "Account number", required=True),
        _f("TITLE", TEXT, "Title", required=True),
        _f("ACCOUNTTYPE"),
        _f("NORMALBALANCE"),
        _f("CLOSINGTYPE"),
        _STATUS,
        *_AUDIT,
    ),
    "GL Account",
    "GL Accounts",
    generic_create=True,
    generic_update=True,
)
STATACCOUNT = ObjectDef(
    "STATACCOUNT",
    "ACCOUNTNO",
    "gl.stataccounts",
    (
        _f("RECORDNO", INT, read_only=True),
        _f("ACCOUNTNO", TEXT, "Account number", required=True),
        _f("TITLE", TEXT, "Title", required=True),
        _f("ACCOUNTTYPE"),
        _STATUS,
        *_AUDIT,
    ),
    "Statistical Account",
    "Statistical Accounts",
    generic_create=True,
    generic_update=True,
)
ARACCOUNTLABEL = ObjectDef(
    "ARACCOUNTLABEL",
    "ACCOUNTLABEL",
    "ar.accountlabels",
    (
        _f("RECORDNO", INT, read_only=True),
        _f("ACCOUNTLABEL", TEXT, "Label", required=True),
        _f("DESCRIPTION"),
        _f("GLACCOUNTNO"),
        _f("OFFSETGLACCOUNTNO"),
        _STATUS,
        *_AUDIT,
    ),
    "AR Account Label",
    "AR Account Labels",
    generic_create=True,
    generic_update=True,
)
LOCATIONENTITY = ObjectDef(
    "LOCATIONENTITY",
    "LOCATIONID",
    None,
    (
        _f("RECORDNO", INT, read_only=True),
        _f("LOCATIONID", TEXT, "Entity ID"),
        _f("NAME"),
        _f("CURRENCY"),
        _f("OPCOUNTRY"),
        _STATUS,
        _f("WHENCREATED", DATETIME, read_only=True),
        _f("WHENMODIFIED", DATETIME, read_only=True),
    ),
    "Entity",
    "Entities",
    generic_delete=False,
)
CHARGE_QUEUE = ObjectDef(
    "bluesnaparqueue",
    "name",
    "bluesnap.queue",
    (
        _f("id", INT, "Record number", read_only=True),
        _f("name", TEXT, "Request ID"),
        _f("customerid", TEXT, "Customer ID"),
        _f("invoicekey", TEXT, "Invoice record number"),
        _f("amount", DECIMAL, "Amount"),
        _f("currency", TEXT, "Currency"),
        _f("status", TEXT, "Status"),
        _f("message", TEXT, "Message"),
        _f("paymentkey", TEXT, "AR payment record number"),
        _f("whencreated", DATETIME, read_only=True),
        _f("whenmodified", DATETIME, read_only=True),
        _f("MEGAENTITYID", TEXT, read_only=True),
    ),
    "BlueSnap AR Queue",
    "BlueSnap AR Queue",
    generic_create=True,
    generic_update=True,
    custom_object=True,
)

# Auto-payment rules managed inside Intacct (the BlueSnap application's second
# object; its policy is the queue's). Lists are comma separated; amounts decimal.
RULE_OBJECT = ObjectDef(
    "bluesnaparrule",
    "name",
    "bluesnap.queue",
    (
        _f("id", INT, "Record number", read_only=True),
        _f("name", TEXT, "Rule name"),
        _f("enabled", TEXT, "Enabled (true/false)"),
        _f("priority", INT, "Priority (lower first)"),
        _f("customerids", TEXT, "Customer IDs"),
        _f("currencies", TEXT, "Currencies"),
        _f("minamount", DECIMAL, "Minimum invoice amount"),
        _f("maxamount", DECIMAL, "Maximum invoice amount"),
        _f("amountcurrency", TEXT, "Currency of the amounts"),
        _f("trigger", TEXT, "When to charge"),
        _f("days", INT, "Days"),
        _f("timeofday", TEXT, "Time of day (HH:MM)"),
        _f("amountmode", TEXT, "How much to charge"),
        _f("maximum", DECIMAL, "Maximum charge"),
        _f("retrydays", TEXT, "Retry after days"),
        _f("arbridgeid", TEXT, "arbridge rule ID"),
        _f("syncstatus", TEXT, "Sync status"),
        _f("whencreated", DATETIME, read_only=True),
        _f("whenmodified", DATETIME, read_only=True),
        _f("MEGAENTITYID", TEXT, read_only=True),
    ),
    "BlueSnap AR Rule",
    "BlueSnap AR Rules",
    generic_create=True,
    generic_update=True,
    custom_object=True,
)

OBJECTS: dict[str, ObjectDef] = {
    o.name: o
    for o in (
        CUSTOMER,
        ARINVOICE,
        ARINVOICEITEM,
        ARPYMT,
        ARPYMTDETAIL,
        SODOCUMENT,
        CHECKINGACCOUNT,
        SAVINGSACCOUNT,
        CREDITCARD,
        GLACCOUNT,
        STATACCOUNT,
        ARACCOUNTLABEL,
        LOCATIONENTITY,
        CHARGE_QUEUE,
        RULE_OBJECT,
    )
}

# The custom fields every sandbox company has on CUSTOMER and ARINVOICE: the
# Level 2 tax amount and the links arbridge writes back.
DEFAULT_CUSTOM_FIELDS: dict[str, tuple[FieldDef, ...]] = {
    "ARINVOICE": (
        FieldDef("TAX_AMOUNT", DECIMAL, "Tax amount (Level 2)", custom=True),
        FieldDef("PAYMENT_LINK", TEXT, "Payment link", custom=True, max_length=500),
        FieldDef("NEXT_AUTO_CHARGE", DATE, "Next auto charge", custom=True),
    ),
    "CUSTOMER": (
        FieldDef("PAY_BALANCE_LINK", TEXT, "Pay balance link", custom=True, max_length=500),
        FieldDef("PAYMENT_METHOD_LINK", TEXT, "Payment method link", custom=True, max_length=500),
        FieldDef("NEXT_AUTO_CHARGE", DATE, "Next auto charge", custom=True),
    ),
}


def resolve_object(name: str) -> ObjectDef | None:
    """Object names are case-insensitive on the wire (readByQuery sends lower case too)."""
    return OBJECTS.get(name.upper()) or OBJECTS.get(name.lower())
