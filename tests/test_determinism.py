"""The suite is deterministic on every machine (issue 27, item 7): ``make test`` draws the same
hypothesis cases every run, as CI does, unless a developer asks for fresh ones."""
import os

import pytest
from hypothesis import settings


@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE", "dev") not in ("dev", "ci"),
                    reason="a developer asked for another hypothesis profile")
def test_the_default_hypothesis_profile_is_derandomised_and_reads_no_database():
    """Was the random 'dev' profile: test_property_check_can_fail[triangle] failed once in a fresh make test."""
    assert settings.default.derandomize is True
    assert settings.default.database is None


def test_a_random_profile_is_there_for_exploring():
    assert settings.get_profile("explore").derandomize is False
