"""The canonical data model: what each kind of record holds, and how source columns are recognised.

Every source (CSV, Excel, Parquet, PostgreSQL) is mapped onto these fields before anything is stored,
so later stages never see a source's own column names. Only the fields marked required must be present;
each later analysis works with what is there and says what it skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    """What a source file holds."""

    transactions = "transactions"
    invoices = "invoices"
    customers = "customers"
    products = "products"


class FieldType(str, Enum):
    text = "text"
    timestamp = "timestamp"
    date = "date"
    number = "number"
    boolean = "boolean"


@dataclass(frozen=True)
class Field:
    name: str
    type: FieldType
    required: bool = False
    synonyms: tuple[str, ...] = ()
    """Normalised source names (lower case, letters and digits only), best first."""


T, TS, D, N, B = FieldType.text, FieldType.timestamp, FieldType.date, FieldType.number, FieldType.boolean

_CUSTOMER = ("customerid", "customer", "custid", "customerno", "customernumber", "customercode", "clientid",
             "client", "clientno", "accountid", "accountnumber", "accountno", "account", "buyerid", "memberid",
             "userid", "email", "customeremail")

FIELDS: dict[Kind, tuple[Field, ...]] = {
    Kind.transactions: (
        Field("customer_id", T, True, _CUSTOMER),
        Field("order_id", T, False, ("orderid", "invoice", "invoiceno", "invoicenumber", "invoiceid", "orderno",
                                     "ordernumber", "order", "transactionid", "receiptno", "documentno", "name")),
        Field("order_date", TS, True, ("orderdate", "invoicedate", "date", "orderdatetime", "createdat",
                                       "orderedat", "transactiondate", "purchasedate", "saledate", "datetime",
                                       "timestamp", "orderdt")),
        Field("product_id", T, False, ("productid", "stockcode", "sku", "lineitemsku", "productcode", "itemcode",
                                       "itemid", "itemno", "articleno", "article", "materialnumber", "product",
                                       "item")),
        Field("description", T, False, ("description", "productname", "itemname", "lineitemname",
                                        "itemdescription", "productdescription", "title")),
        Field("quantity", N, False, ("quantity", "qty", "lineitemquantity", "quantityordered", "units",
                                     "numberofcds", "count")),
        Field("unit_price", N, False, ("unitprice", "price", "lineitemprice", "priceeach", "itemprice",
                                       "saleprice", "rate")),
        Field("amount", N, False, ("amount", "linetotal", "lineamount", "extendedprice", "revenue", "sales",
                                   "dollarvalue", "netamount", "value", "total", "totalprice")),
        Field("currency", T, False, ("currency", "currencycode", "curr")),
        Field("country", T, False, ("country", "billingcountry", "shippingcountry", "countrycode")),
        Field("channel", T, False, ("channel", "saleschannel", "source", "store")),
        Field("cancelled", B, False, ("cancelled", "canceled", "iscancelled", "cancellation", "cancelledat",
                                      "cancelledat", "creditnote", "isreturn")),
    ),
    Kind.invoices: (
        Field("invoice_id", T, True, ("invoiceid", "invoice", "invoiceno", "invoicenumber", "documentno",
                                      "documentnumber", "billno")),
        Field("customer_id", T, True, _CUSTOMER),
        Field("invoice_date", D, True, ("invoicedate", "issuedate", "documentdate", "date", "billdate")),
        Field("due_date", D, False, ("duedate", "due", "paymentdue", "dueon", "netduedate")),
        Field("amount", N, False, ("amount", "invoiceamount", "total", "amountdue", "value", "grossamount")),
        Field("paid_date", D, False, ("paiddate", "paymentdate", "datepaid", "paidon", "clearingdate",
                                      "settledate")),
        Field("disputed", B, False, ("disputed", "dispute", "indispute", "isdisputed")),
    ),
    Kind.customers: (
        Field("customer_id", T, True, _CUSTOMER),
        Field("industry", T, False, ("industry", "sector", "vertical")),
        Field("region", T, False, ("region", "territory", "area", "state", "country")),
        Field("size", T, False, ("size", "companysize", "employees", "sizeband", "tier")),
        Field("signup_date", D, False, ("signupdate", "customersince", "createdat", "registrationdate",
                                        "firstseen", "joined")),
    ),
    Kind.products: (
        Field("product_id", T, True, ("productid", "stockcode", "sku", "productcode", "itemcode", "itemid",
                                      "product", "item")),
        Field("description", T, False, ("description", "productname", "itemname", "name", "title")),
        Field("category", T, False, ("category", "productcategory", "productgroup", "group", "family",
                                     "department", "type", "producttype")),
        Field("unit_cost", N, False, ("unitcost", "cost", "costprice", "cogs", "standardcost")),
        Field("margin", N, False, ("margin", "grossmargin", "marginpct", "marginrate")),
    ),
}

KEYS: dict[Kind, tuple[str, ...]] = {
    Kind.invoices: ("invoice_id",),
    Kind.customers: ("customer_id",),
    Kind.products: ("product_id",),
}
"""Kinds identified by a key: a later row with the same key updates the stored one. Transactions have no
key: an order line is identified by its whole content (see README, 'Duplicates and overlapping exports')."""


def normalise_name(name: str) -> str:
    """'Customer ID' -> 'customerid', 'Lineitem sku' -> 'lineitemsku'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def field(kind: Kind, name: str) -> Field:
    for f in FIELDS[kind]:
        if f.name == name:
            return f
    raise KeyError(f"{kind.value} has no field {name!r}; fields: {', '.join(f.name for f in FIELDS[kind])}")


def recognise_columns(kind: Kind, columns: list[str], explicit: dict[str, str] | None = None) -> dict[str, str]:
    """Map canonical field -> source column, from explicit settings first, then from common names.

    Each source column is used for at most one field; fields are matched in synonym order so that, e.g.,
    'Invoice' becomes the order id of a transactions file even though 'InvoiceDate' is also present.
    """
    explicit = dict(explicit or {})
    by_norm: dict[str, str] = {}
    for col in columns:
        by_norm.setdefault(normalise_name(col), col)
    mapping: dict[str, str] = {}
    used: set[str] = set()
    known = {f.name for f in FIELDS[kind]}
    for canonical, source in explicit.items():
        if canonical not in known:
            raise ValueError(f"--map {canonical}=...: {kind.value} has no field {canonical!r} "
                             f"(fields: {', '.join(sorted(known))})")
        if source not in columns:
            match = by_norm.get(normalise_name(source))
            if match is None:
                raise ValueError(f"--map {canonical}={source}: no such column (columns: {', '.join(columns)})")
            source = match
        mapping[canonical] = source
        used.add(source)
    for f in FIELDS[kind]:
        if f.name in mapping:
            continue
        for syn in f.synonyms:
            col = by_norm.get(syn)
            if col is not None and col not in used:
                mapping[f.name] = col
                used.add(col)
                break
    return mapping


NON_PRODUCT_CODES = ("POST", "DOT", "M", "C2", "D", "S", "B", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS")
NON_PRODUCT_CODE_PREFIXES = ("ADJUST", "TEST", "GIFT_")
NON_PRODUCT_DESCRIPTION = r"(?i)^\s*(postage|dotcom postage|carriage|manual|discount|bank charges|samples|" \
                          r"amazon fee|adjust|cruk commission|this is a test|shipping|delivery|freight)"
"""Lines that are not a product a customer chose: postage, fees, manual adjustments, vouchers, tests.
They are kept in the store, flagged, and excluded from behaviour models. Extend in loyalist.toml."""

CANCELLED_ORDER_ID = r"^[Cc][0-9]+$"
"""An order id such as 'C489449' marks a cancellation / credit note (Online Retail II's convention)."""
