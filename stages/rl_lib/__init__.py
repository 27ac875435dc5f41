"""The RL stages' library (grpo, length_rl): arguments, rewards wiring and the timed GRPO trainer."""
