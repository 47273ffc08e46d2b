"""EN 16931 e-invoices of invoices and credit notes, in UN/CEFACT CII (Factur-X EN 16931)
and OASIS UBL 2.1 (XRechnung for German buyers), built from the same view as the PDF.

`categories` maps a line's tax reason to its VAT category (pure); `model` turns a document's
view into an `EInvoice` and says which fields a valid one misses (pure); `cii` and `ubl`
write the XML; `facturx` embeds the CII XML into the PDF/A-3; `service` loads and answers
for the API and checks an invoice at finalization.
"""
