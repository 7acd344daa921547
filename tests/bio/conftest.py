from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "bio"


@pytest.fixture
def bio_data() -> Path:
    return DATA
