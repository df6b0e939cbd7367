"""DVC stages: one module per stage, each with ``run(config) -> metrics`` and ``main()``."""
