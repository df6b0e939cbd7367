"""The optimisers' math as small pure functions of tensors, one page each (PPO's lives in
``rlhf_lab/algorithms/ppo.py``). Shapes: B responses (k per prompt, grouped contiguously: prompt p owns rows
p·k … p·k + k − 1), T response tokens; ``mask`` is 1 on response tokens up to and including <eos>."""
