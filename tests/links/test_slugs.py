"""Slug generation and validation (pure, no services)."""

import pytest

from service.links import slugs


def test_generated_slugs_use_eight_unambiguous_characters():
    generated = {slugs.generate() for _ in range(2000)}
    assert len(generated) == 2000
    for slug in generated:
        assert len(slug) == 8
        assert not set(slug) & set("0o1li")
        assert slugs.problem_with(slug) is None


@pytest.mark.parametrize("slug", ["ab", "x" * 65, "has space", "ünï", "a.b", "a/b"])
def test_malformed_slugs_are_refused(slug):
    assert "3 to 64" in slugs.problem_with(slug)


@pytest.mark.parametrize("slug", ["api", "health", "livez", "metrics", "static", "API", "Health"])
def test_reserved_slugs_are_refused_case_insensitively(slug):
    assert "reserved" in slugs.problem_with(slug)


def test_custom_slugs_are_case_insensitive():
    assert slugs.normalize("Promo-2026_A") == "promo-2026_a"
    assert slugs.problem_with("Promo-2026_A") is None
