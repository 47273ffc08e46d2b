"""Which tax rate a line takes and why (billing.taxes.rules), case by case, and the
format and check digits of typed tax ids."""

from decimal import Decimal

import pytest

from billing.taxes.rules import (
    REVERSE_CHARGE_NOTICE,
    Buyer,
    RateOption,
    TaxCategory,
    TaxIdInvalid,
    TaxIdType,
    TaxReason,
    TaxStatus,
    decide,
    legal_notice,
    validate_tax_id,
)

# Business, private person, exempt.
B, P, X = TaxStatus.BUSINESS, TaxStatus.INDIVIDUAL, TaxStatus.EXEMPT
STD, RED, ZERO, EXEMPT = (
    TaxCategory.STANDARD,
    TaxCategory.REDUCED,
    TaxCategory.ZERO,
    TaxCategory.EXEMPT,
)
VAT = TaxIdType.EU_VAT
RATES = [
    RateOption("txr_de", Decimal(19), "DE"),
    RateOption("txr_de_red", Decimal(7), "DE", TaxCategory.REDUCED),
    RateOption("txr_fr", Decimal(20), "FR"),
    RateOption("txr_us_ny", Decimal("8.875"), "US", region="NY"),
    RateOption("txr_us", Decimal(0), "US"),
]

# seller, buyer's country, status, tax id type, category -> percentage, reason, rate id
CASES = [
    # Domestic: the seller's rate of the category, whoever buys.
    ("DE", "DE", B, VAT, STD, "19", TaxReason.STANDARD, "txr_de"),
    ("DE", "DE", P, None, STD, "19", TaxReason.STANDARD, "txr_de"),
    ("DE", "DE", B, None, RED, "7", TaxReason.STANDARD, "txr_de_red"),
    ("DE", "DE", P, None, ZERO, "0", TaxReason.STANDARD, "txr_de"),
    # No address: the seller's country.
    ("DE", None, P, None, STD, "19", TaxReason.STANDARD, "txr_de"),
    ("DE", None, B, VAT, STD, "19", TaxReason.STANDARD, "txr_de"),
    # EU B2B across borders with a VAT id: reverse charge.
    ("DE", "FR", B, VAT, STD, "0", TaxReason.REVERSE_CHARGE, None),
    ("DE", "AT", B, VAT, RED, "0", TaxReason.REVERSE_CHARGE, None),
    # EU B2C across borders: the customer's country's rate when configured (OSS)...
    ("DE", "FR", P, None, STD, "20", TaxReason.STANDARD, "txr_fr"),
    # ...a business without a VAT id is taxed as a consumer...
    ("DE", "FR", B, None, STD, "20", TaxReason.STANDARD, "txr_fr"),
    # ...a non-EU tax id does not make reverse charge either...
    ("DE", "FR", B, TaxIdType.GB_VAT, STD, "20", TaxReason.STANDARD, "txr_fr"),
    # ...and the seller's rate when the customer's country has none.
    ("DE", "IT", P, None, STD, "19", TaxReason.STANDARD, "txr_de"),
    ("DE", "IT", P, None, RED, "7", TaxReason.STANDARD, "txr_de_red"),
    # Outside the EU, from the EU: exports at 0%, business or not.
    ("DE", "US", B, None, STD, "0", TaxReason.ZERO_RATED_EXPORT, None),
    ("DE", "GB", B, TaxIdType.GB_VAT, STD, "0", TaxReason.ZERO_RATED_EXPORT, None),
    ("DE", "CH", P, None, STD, "0", TaxReason.ZERO_RATED_EXPORT, None),
    # Exempt customers, and exempt products, before anything else.
    ("DE", "DE", X, None, STD, "0", TaxReason.EXEMPT, None),
    ("DE", "FR", X, VAT, STD, "0", TaxReason.EXEMPT, None),
    ("DE", "US", X, None, STD, "0", TaxReason.EXEMPT, None),
    ("DE", "DE", B, None, EXEMPT, "0", TaxReason.EXEMPT, None),
    # A seller outside the EU: its own rate at home, the region's first; nothing abroad.
    ("US", "US", B, None, STD, "0", TaxReason.STANDARD, "txr_us"),
    ("US", "DE", B, VAT, STD, "0", TaxReason.ZERO_RATED_EXPORT, None),
    # A country with no rate configured: 0%, standard, no rate object.
    ("FR", "FR", P, None, RED, "0", TaxReason.STANDARD, None),
    ("IT", "IT", P, None, STD, "0", TaxReason.STANDARD, None),
]


@pytest.mark.parametrize(
    ("seller", "country", "status", "id_type", "category", "percentage", "reason", "rate_id"),
    CASES,
)
def test_the_rules_choose_the_rate_and_say_why(
    seller, country, status, id_type, category, percentage, reason, rate_id
):
    decision = decide(
        seller_country=seller,
        buyer=Buyer(country=country, status=status, tax_id_type=id_type),
        category=category,
        rates=RATES,
    )
    assert (decision.percentage, decision.reason, decision.rate_id) == (
        Decimal(percentage),
        reason,
        rate_id,
    )


def test_a_region_s_own_rate_comes_before_its_country_s():
    ny = Buyer(country="US", region="NY", status=TaxStatus.INDIVIDUAL)
    decision = decide(seller_country="US", buyer=ny, category=STD, rates=RATES)
    assert (decision.percentage, decision.rate_id) == (Decimal("8.875"), "txr_us_ny")


def test_without_a_seller_country_no_tax_is_charged_but_exemption_still_says_so():
    buyer = Buyer(country="FR", status=TaxStatus.BUSINESS, tax_id_type=VAT)
    assert decide(seller_country=None, buyer=buyer, category=STD, rates=RATES).reason is (
        TaxReason.STANDARD
    )
    assert decide(seller_country=None, buyer=buyer, category=STD, rates=RATES).percentage == 0
    exempt = Buyer(country="FR", status=TaxStatus.EXEMPT)
    assert decide(seller_country=None, buyer=exempt, category=STD, rates=RATES).reason is (
        TaxReason.EXEMPT
    )


def test_the_oldest_of_two_fitting_rates_is_chosen():
    rates = [RateOption("txr_b", Decimal(21), "NL"), RateOption("txr_a", Decimal(9), "NL")]
    buyer = Buyer(country="NL", status=TaxStatus.INDIVIDUAL)
    assert decide(seller_country="NL", buyer=buyer, category=STD, rates=rates).rate_id == "txr_a"


def test_reverse_charge_carries_the_directive_s_wording_and_standard_none():
    assert legal_notice("reverse_charge") == REVERSE_CHARGE_NOTICE
    assert "Article 196 Council Directive 2006/112/EC" in REVERSE_CHARGE_NOTICE
    assert legal_notice("zero_rated_export")
    assert legal_notice("exempt")
    for reason in ("standard", "manual", None, "unheard_of"):
        assert legal_notice(reason) is None


GOOD_IDS = [
    (TaxIdType.EU_VAT, "DE 136,695 976", "DE136695976"),
    (TaxIdType.EU_VAT, "fr40303265045", "FR40303265045"),
    (TaxIdType.EU_VAT, "EL 094259216", "EL094259216"),
    (TaxIdType.EU_VAT, "NL 004495445B01", "NL004495445B01"),
    (TaxIdType.GB_VAT, "GB 980 7806 84", "GB980780684"),
    (TaxIdType.GB_VAT, "980780684", "GB980780684"),
    (TaxIdType.CH_VAT, "CHE-107.787.577 MWST", "CHE107787577MWST"),
    (TaxIdType.NO_VAT, "NO 995 525 828 MVA", "NO995525828MVA"),
    (TaxIdType.US_EIN, "04-2103594", "042103594"),
    (TaxIdType.AU_ABN, "83 914 571 673", "83914571673"),
    (TaxIdType.IN_GST, "27AAPFU0939F1ZV", "27AAPFU0939F1ZV"),
]


@pytest.mark.parametrize(("kind", "given", "stored"), GOOD_IDS)
def test_a_good_tax_id_of_every_type_is_accepted_and_kept_compact(kind, given, stored):
    assert validate_tax_id(kind, given) == stored


BAD_IDS = [
    (TaxIdType.EU_VAT, "DE136695977"),  # check digit
    (TaxIdType.EU_VAT, "DE13669597"),  # too short
    (TaxIdType.EU_VAT, "XX136695976"),  # no such country
    (TaxIdType.EU_VAT, "GB980780684"),  # not a member state
    (TaxIdType.EU_VAT, "not a number"),
    (TaxIdType.GB_VAT, "GB980780685"),
    (TaxIdType.CH_VAT, "CHE-107.787.578 MWST"),
    (TaxIdType.NO_VAT, "NO 995 525 829 MVA"),
    (TaxIdType.US_EIN, "07-2103594"),  # no such campus prefix
    (TaxIdType.US_EIN, "04-210359"),
    (TaxIdType.AU_ABN, "83 914 571 674"),
    (TaxIdType.IN_GST, "27AAPFU0939F1ZW"),
]


@pytest.mark.parametrize(("kind", "given"), BAD_IDS)
def test_a_tax_id_with_a_bad_check_digit_or_format_is_refused(kind, given):
    with pytest.raises(TaxIdInvalid):
        validate_tax_id(kind, given)
