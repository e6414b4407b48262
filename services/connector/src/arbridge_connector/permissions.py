"""The permissions the integration guide asks for, and where an Intacct admin grants each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Required:
    module: str
    obj: str
    rights: tuple[str, ...]
    platform: bool = False  # exists only with Platform Services and the BlueSnap application


REQUIRED: tuple[Required, ...] = (
    Required("Company", "Attachments", ("Edit",)),
    Required("Cash Management", "Credit Card Accounts", ("List", "View")),
    Required("Cash Management", "Checking Accounts", ("List", "View")),
    Required("Cash Management", "Savings Accounts", ("List", "View")),
    Required("General Ledger", "Accounts", ("List", "View")),
    Required("General Ledger", "Statistical Accounts", ("List", "View")),
    Required("Accounts Receivable", "Manage Payments", ("List", "View", "Add", "Edit")),
    Required("Accounts Receivable", "Customers", ("List", "View", "Add", "Edit")),
    Required("Accounts Receivable", "Invoices", ("List", "View", "Add", "Edit", "Post")),
    Required("Accounts Receivable", "AR Account Labels", ("List", "View", "Add")),
    Required("Order Entry", "Order Entry Transactions", ("List", "View", "Add", "Edit")),
    Required("Order Entry", "Order Entry Transaction Definitions", ("List", "View", "Add", "Edit")),
    Required(
        "BlueSnap",
        "BlueSnapARQueue",
        ("List", "View", "Add", "Edit", "Delete", "Import", "Templates"),
        platform=True,
    ),
)


def where_to_fix(
    required: Required, missing: list[str], *, multi_entity: bool, user_id: str
) -> str:
    rights = ", ".join(missing)
    if multi_entity:
        path = (
            "Company > Admin > Roles > (the role assigned to "
            f"{user_id}) > Subscriptions > {required.module}"
        )
    else:
        path = (
            f"Company > Admin > Web Services Users > {user_id} > Subscriptions > {required.module}"
        )
    return f"{path}: grant {rights} on {required.obj}"
