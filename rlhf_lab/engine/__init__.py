"""Lightning plumbing around the algorithms' math: the online-policy loop every on-policy optimiser
shares (:mod:`.online`) and its evaluation callback (:mod:`.evaluation`); PPO (:mod:`.ppo_module`: the
value model, GAE), the critic-free optimisers (:mod:`.critic_free`: RLOO, GRPO), the offline
direct-alignment module (:mod:`.direct`: DPO, IPO), SFT (:mod:`.sft_module`) and the reward models'
Bradley–Terry training (:mod:`.reward_module`)."""
