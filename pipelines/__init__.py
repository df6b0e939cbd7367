"""DVC stages: one module per stage, each with ``run(config) -> metrics`` and ``main()``."""

from rlhf_lab.runtime.stage import set_environment_defaults

# Before any stage module imports transformers: huggingface_hub reads HF_HUB_OFFLINE once, at import.
set_environment_defaults()
