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
