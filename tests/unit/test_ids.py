from billing.platform.ids import new_id


def test_ids_made_one_after_another_sort_in_that_order():
    ids = [new_id("il") for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_an_id_carries_its_prefix():
    assert new_id("in").startswith("in_")
