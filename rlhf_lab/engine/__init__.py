"""Lightning plumbing around the algorithms' math: the online-policy loop every on-policy optimiser
shares (:mod:`.online`), its critic-free optimisers (:mod:`.critic_free`: RLOO, GRPO) and the offline
direct-alignment module (:mod:`.direct`: DPO, IPO). PPO (:mod:`.ppo_module`: the value model, GAE) and SFT (:mod:`.sft_module`)."""
