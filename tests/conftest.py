import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama model + BPE tokenizer with a ChatML template, built once per session."""
    from emguard.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def pytest_configure(config):
    import torch

    # Tests use tiny models; one thread avoids oversubscribing CI's 2 cores.
    torch.set_num_threads(1)
