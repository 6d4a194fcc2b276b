"""Behavior learning, replay, the Dreamer agent and the synchronous training loop."""
