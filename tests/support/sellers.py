"""A seller whose settings are complete enough for a valid EN 16931 e-invoice, as the
environment gives them."""

COMPLETE_SELLER_ENV = {
    "SELLER_NAME": "Example Billing GmbH",
    "SELLER_TAX_ID": "DE987654321",
    "SELLER_EMAIL": "billing@example.com",
    "SELLER_STREET": "Friedrichstraße 1",
    "SELLER_CITY": "Berlin",
    "SELLER_POSTAL_CODE": "10117",
    "SELLER_COUNTRY": "DE",
    "SELLER_PHONE": "+49 30 1234567",
    "SELLER_IBAN": "DE89370400440532013000",
    "SELLER_BIC": "COBADEFFXXX",
}
