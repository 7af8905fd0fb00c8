"""The inbox's parsing: the URL and a request object's body, refused by name."""

import pytest

from tasks.inbox import parse_inbox_url, read_request


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket/deletion-requests/", ("bucket", "deletion-requests/")),
        ("s3://bucket/deletion-requests", ("bucket", "deletion-requests/")),
        ("s3://bucket", ("bucket", "")),
    ],
)
def test_inbox_urls(url, expected):
    assert parse_inbox_url(url) == expected


@pytest.mark.parametrize("url", ["https://bucket/x/", "s3:///x/", "bucket/x"])
def test_bad_inbox_urls_name_the_setting(url):
    with pytest.raises(ValueError, match="inbox_url"):
        parse_inbox_url(url)


def test_request_bodies_are_read_or_refused_naming_the_field():
    assert read_request(b'{"request_id": "r-1", "sample_ids": ["a"]}').sample_ids == ["a"]
    with pytest.raises(ValueError, match="sample_ids"):
        read_request(b'{"request_id": "r-1", "sample_ids": "a"}')
    with pytest.raises(ValueError, match="exactly one of sample_ids or where"):
        read_request(b'{"request_id": "r-1"}')
    with pytest.raises(ValueError, match="not JSON"):
        read_request(b'{"request_id": ')
    with pytest.raises(ValueError, match="bytes"):
        read_request(b" " * (2 << 20))


def test_a_processed_copy_names_the_samples_by_salted_hash():
    import json

    from tasks.inbox import processed_copy
    from tasks.redaction import hash_id

    salt = "a-secret-salt-of-the-deployment"
    request = read_request(b'{"request_id": "r-1", "sample_ids": ["a-1", "a-2"], "reason": "x"}')
    copy = json.loads(processed_copy(request, salt))
    assert copy["sample_id_hashes"] == [hash_id("a-1", salt), hash_id("a-2", salt)]
    assert "sample_ids" not in copy and copy["request_id"] == "r-1" and copy["reason"] == "x"
    assert b"a-1" not in processed_copy(request, salt)
    by_attribute = read_request(b'{"request_id": "r-2", "where": {"source": "faulty"}}')
    assert processed_copy(by_attribute, salt) is None  # no id: filed as sent
