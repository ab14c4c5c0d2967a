"""Mergeable accumulators: update / merge / state_dict / load_state_dict."""
