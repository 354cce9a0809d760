import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)

#: Everything the default ``pytest`` run leaves out, and why (the one list; STYLE.md item 10).
#: Each is run by .ci/run as its own step.
NOT_IN_DEFAULT_RUN = {
    "slow": "tests/test_book.py: the book built from scratch and every page checked in headless "
            "Chromium (about a minute); run `pytest -m slow tests/test_book.py`. "
            "tests/test_real_configs.py: capture vs eager on the LLaVA-NeXT and OneVision "
            "replicas (anyres prompts of ~2300-2900 tokens: the eager reference takes ~10-30 s "
            "each on one core); run `pytest -m slow tests/test_real_configs.py`",
}


def pytest_report_header(config):
    return [f"not in the default run (-m {mark}): {why}" for mark, why in NOT_IN_DEFAULT_RUN.items()]


@pytest.fixture(scope="session")
def tiny_llava_pair():
    from tiny_models import tiny_llava

    return tiny_llava()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random LLaVA saved to a folder (model + processor), as a user's model folder."""
    from tiny_models import tiny_llava

    folder = tmp_path_factory.mktemp("tiny-llava")
    model, processor = tiny_llava()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory):
    """A folder of refer-toolkit files for a few fake RefCOCO items."""
    import refcoco_fixtures as F

    return F.write_refer(tmp_path_factory.mktemp("refer"))
