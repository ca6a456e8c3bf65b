"""Shared fixtures: a tiny synthetic benchmark generated once per test session."""

import pytest

from d2r.datasets.synthetic import generate


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A 16-image synthetic benchmark (4 landmarks, 4 queries) in the revisitop layout."""
    out = tmp_path_factory.mktemp("synth") / "tiny"
    return generate(out, seed=0, num_landmarks=4, num_db_images=16, num_distractors=4,
                    queries_per_landmark=1)
