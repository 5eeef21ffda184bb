"""Testing tools: capture, dump, replay, and (elsewhere) wire helpers and strategies."""
